"""Installed as romsim.models (setuptools package-dir maps the top-level models/ folder)."""
