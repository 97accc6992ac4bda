"""The GPU check: one module per part, run by ``python -m benchmarks.gpu_check`` (see conftest.py)."""
