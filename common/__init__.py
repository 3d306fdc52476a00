"""Torch-free helpers shared by every stage (training, export, runtime, benchmarks).

``common.atomic`` (all-or-nothing file writes), ``common.jsonfile`` (versioned JSON
files) and ``common.hashing`` (file digests). It imports nothing of the project.
"""
