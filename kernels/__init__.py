"""Installed as romsim.kernels (setuptools package-dir maps the top-level kernels/ folder)."""
