"""Gateware: the zero-skipping sparse convolution accelerator."""
