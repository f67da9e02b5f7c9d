"""Baselines the code representations are compared with: supervised CNNs (``cnn``) and a
self-supervised SimCLR trunk (``simclr``), trained on the shared loop of tokenlm.training."""
