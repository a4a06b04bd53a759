"""romsim: a simulator for ROM-based on-device QLoRA accelerators (ROMA-style)."""

__version__ = "0.1.0"
