"""Functional simulation: GGUF loading, tokenizer, ROM-image-backed LLaMA model through
romsim.kernels, generate loop, and a torch reference (torch imported lazily, inside functions)."""
