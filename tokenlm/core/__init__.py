"""The bottom layer: errors, strict configs, durable file writes, progress, trackers, threads.

Nothing here imports any other part of tokenlm."""
