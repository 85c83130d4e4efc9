"""Pruning methods: KEP, IESSP and baselines behind one interface."""
