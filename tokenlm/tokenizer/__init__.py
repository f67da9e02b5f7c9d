"""Audio -> codes: the patch autoencoder + codebook (AudioTokenizer), FAISS k-means, fitting
both on a run's features, and encoding audio files into a token store."""
