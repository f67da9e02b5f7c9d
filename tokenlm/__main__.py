"""``python -m tokenlm``: the same as the ``tokenlm`` command (what torchrun -m needs)."""

from tokenlm.cli import main

main()
