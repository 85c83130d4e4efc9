"""prunefab: pruned CNNs on small FPGAs, bit-exact from PyTorch to the board."""

__version__ = "0.1.0"
