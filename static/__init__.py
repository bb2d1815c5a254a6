"""The share page's files, as the package `tracker.static` (see pyproject.toml).

static/ stays at the repository's top level, and this file makes it importable
as `tracker.static`, so that `importlib.resources` finds the same files from a
checkout (`pip install -e .`) and from an installed wheel.
"""
