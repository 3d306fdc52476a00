"""Benchmarks of every deployment path: ``python -m benchmarks.run`` (see ``benchmarks/README.md``)."""
