"""The pipeline: the stage registry and RunContext (what `tokenlm run` runs, in order), the
labelled tasks judged with a run's frozen models, and loaders of a run's trained models."""
