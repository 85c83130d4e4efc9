"""Simulation: RTL benches, whole-network simulation and the cycle model."""
