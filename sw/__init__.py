"""Software side: train, prune, quantize and export networks; the integer reference."""
