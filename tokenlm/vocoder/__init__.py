"""Codes -> audio: the WaveNet decoder (Vocoder), its training crops, the linear predictor it
models the excitation of, and the Griffin-Lim reference that needs no training."""
