"""Benchmarks of the service and its parts; each prints JSON figures as ratios against a baseline run in
the same process. Run from the repository root (`python -m bench.serve …`); not in the image or package."""
