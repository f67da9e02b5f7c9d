"""Audio in, arrays out: decoding, log-mel features, dataset layouts (folders, manifests, HF
datasets, WebDataset shards, tar members), train/val/test splits, and the flat per-clip stores
every later stage reads."""
