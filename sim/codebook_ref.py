"""Test data for the cell's codebook paths (NF4 and ternary, 2-bit or base-3 codes).

The golden model is :mod:`romsim.kernels.codebook` (the format container
:class:`~romsim.kernels.codebook.CodebookTensor`, its quantizers, and the integer path: per-group
sums ``T`` over the fixed-point NF4 codebook / ternary weights and the fp32 partials with the
kernels' dequantizer rounding). This module only turns it into a cell's parameters, ROM words,
activations and expected outputs:

* :func:`tile_params` / :func:`tile_words` -- ``CellParams`` and ROM words of a run of groups
  (each group's code stream, :func:`romsim.kernels.codebook.pack_codes`, in whole words, then the
  nf4 metadata words, :mod:`romsim.rom.layout` rules 2, 3b, 4, 5).
* :func:`golden` -- the expected (T, scale bits, fp32 partial bits) of a run, from
  :func:`romsim.kernels.codebook.codebook_partials`.
* :func:`acts` -- BFP int8 activations (the kernels' quantizer).
"""

from __future__ import annotations

import numpy as np
from romsim.kernels.codebook import CodebookTensor, codebook_partials, pack_codes
from romsim.kernels.qmatmul import quantize_act_bfp
from romsim.rtl.params import CellParams

CodebookMatrix = CodebookTensor
quantize = CodebookTensor.quantize


def tile_params(cm: CodebookTensor, start: int, stop: int, word_bits: int = 64) -> CellParams:
    return CellParams(
        bits=4 if cm.kind == "nf4" else 2,
        group_size=cm.group_size,
        word_bits=word_bits,
        n_groups=stop - start,
        ng_row=cm.ng,
        kg0=start % cm.ng,
        zero_bits=0,
        kind=cm.kind,
        packing=cm.packing,
        tensor_scale=int(cm.scale.reshape(-1)[0].view(np.uint16)) if cm.kind == "ternary" else 0,
    )


def tile_words(cm: CodebookTensor, start: int, stop: int, word_bits: int = 64) -> np.ndarray:
    """ROM words of row-major groups ``[start, stop)``: each group's code stream (rule 2 or 3b)
    in whole words, then (nf4) the run's metadata from a fresh word (rules 4-6)."""
    p = tile_params(cm, start, stop, word_bits)
    mask = (1 << word_bits) - 1
    words: list[int] = []
    for by in pack_codes(cm)[start:stop]:
        v = int.from_bytes(by.tobytes(), "little")
        for w in range(-(-8 * len(by) // word_bits)):
            words.append((v >> (w * word_bits)) & mask)
    if cm.kind == "nf4":
        sc = cm.scale.reshape(-1)[start:stop].astype(np.float16).view(np.uint16).astype(np.int64)
        mpw, mb = p.metas_per_word, p.meta_bits
        for i in range(0, len(sc), mpw):
            v = 0
            for j, x in enumerate(sc[i : i + mpw].tolist()):
                v |= x << (j * mb)
            words.append(v)
    assert len(words) == p.rom_rows, (len(words), p.rom_rows)
    return np.array(words, np.uint64)


def golden(
    cm: CodebookTensor, a: np.ndarray, e: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For mantissas ``a[V, Kp]`` and group exponents ``e[V, ng]``: (T ``[V, n]`` int64, scale
    bits ``[n]`` uint16, fp32 partial bits ``[V, n]`` uint32) -- romsim.kernels.codebook's."""
    t, p = codebook_partials(cm, a, e, start, stop)
    s = cm.group_scales().reshape(-1)[start:stop].astype(np.float16)
    return t, s.view(np.uint16), np.asarray(p, np.float32).view(np.uint32)


def acts(
    cm: CodebookTensor, x: np.ndarray, n_random: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """BFP int8 activations (the kernels' quantizer, groups of the format's size) for the real
    vectors ``x[V0, K]`` then ``n_random`` heavy-tailed random ones."""
    rng = np.random.default_rng(seed)
    r = rng.standard_t(3, size=(n_random, cm.k)).astype(np.float32)
    xs = np.concatenate([np.asarray(x, np.float32).reshape(-1, cm.k), r])
    xp = np.zeros((len(xs), cm.codes.shape[1]), np.float32)
    xp[:, : cm.k] = xs
    a, e = quantize_act_bfp(xp, cm.group_size, 8)
    return np.asarray(a, np.int64).reshape(len(xs), -1), np.asarray(e, np.int64).reshape(
        len(xs), -1
    )
