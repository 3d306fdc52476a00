"""Developer tools (not part of any pipeline stage): ``python -m tools.typecheck``."""
