"""tokenlm: self-supervised audio tokenization and code language modelling."""

__version__ = "0.1.0"
