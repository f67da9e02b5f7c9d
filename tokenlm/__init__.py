"""tokenlm: self-supervised audio tokenization and code language modelling."""

import os

# OpenMP threads that spin while waiting make torch's many small CPU ops up to 100x slower
# whenever another process shares the cores (measured: one log-mel call 110 ms instead of
# 1 ms). Sleeping waiters cost nothing measurable on an idle machine. Must be set before
# torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
