"""Simulation: the emitted engine RTL against the integer reference, and the cycle model.

cycle_model  exact per-layer cycles and the performance report (no simulator needed)
runner       simulate_rtl and format_report, the library behind `prunefab sim`
bench        the cocotb bench (runs inside Icarus); cases and scoreboard are its host-side parts
icarus       Verilog generation and Icarus builds, cached per configuration
verilator    the fast path: a C++ harness around the Verilated engine
See docs/simulation.md.
"""
