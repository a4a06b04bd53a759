"""Installed as romsim.kernels (setuptools package-dir maps the top-level kernels/ folder).

Numba reference kernels for what the accelerator computes (no torch):

* :mod:`romsim.kernels.bitpack` -- GGUF blocks <-> ROM words and the affine quantizer (the word
  layout itself is :mod:`romsim.rom.layout`).
* :mod:`romsim.kernels.qmatmul` -- quantized GEMV/GEMM from ROM words, int (bit-exact, golden)
  and float paths, block-floating-point activation quantizer.
* :mod:`romsim.kernels.codebook` -- NF4 and ternary (2-bit, base-3) codes and the RTL cell's
  integer path for them (fixed-point NF4 codebook; the golden model of the codebook decode).
* :mod:`romsim.kernels.ops` -- RMSNorm, RoPE, SiLU gate, GQA attention, softmax, LoRA, sampling.

See docs/kernels.md for the rounding rules and the int32 accumulator bound.
"""
