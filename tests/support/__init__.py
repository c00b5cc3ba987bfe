"""Helpers the test folders share (tests/ is on sys.path: pyproject.toml's pytest pythonpath)."""
