"""python -m lars_cuda: what was built and what runs here (lars_cuda/diagnostics.py)."""

from .diagnostics import report

print(report())
