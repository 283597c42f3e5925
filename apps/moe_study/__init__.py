"""Scaling studies of moe-bench: grids, runs with resume, plots, a performance model, a report.

Modules: grid (what to run), runner (running it under mpirun, JSONL/CSV), plots (matplotlib, Agg),
model (alpha-beta + GEMM rate + pipeline + imbalance, fitted by least squares), report (Markdown).
Standard library, numpy and matplotlib only.
"""
