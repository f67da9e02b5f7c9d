"""A run folder: every artifact path (RunDir), the keyed atomic stage folders that build it,
and the lock that lets one command at a time write it."""
