"""Installed as romsim.rtl (setuptools package-dir maps the top-level rtl/ folder)."""
