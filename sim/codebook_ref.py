"""Golden model (numpy) of the cell's codebook paths: NF4 and ternary (2-bit or base-3 codes).

THE REFERENCE for ``CellParams(kind="nf4" | "ternary")`` in :mod:`romsim.rtl.cell` --
``romsim.kernels`` has no NF4 / ternary kernel (yet), so this module defines the formats' cell
arithmetic, after :mod:`romsim.quant` (kinds) and :mod:`romsim.rom.layout` (rules 2, 3b, 4, 5):

* **nf4** (QLoRA / bitsandbytes, blocks of 64): per group an absmax scale ``s`` (fp16, in the
  metadata word, 4 fields per 64-bit word) and 4-bit codes ``q`` indexing the NormalFloat-4
  table. The cell's codebook is fixed point, ``c_q = round(NF4[q] * 2**10)``
  (:func:`romsim.rtl.params.nf4_fixed_table`; |error| <= 2**-11 of ``s`` per weight), so the
  integer datapath stays: ``T = sum c_q * m`` (int8 mantissas ``m``), partial =
  ``fp32(fp32(T) * s) * 2**(e - 10)`` -- the kernels' dequantizer rounding
  (:func:`romsim.kernels.dequant_ref.dequant_f32`) with ``2**-10`` folded into the exponent.
* **ternary** (BitNet b1.58): ``t in {-1, 0, +1}``, one absmean fp16 scale per tensor (in the
  cell's dequantizer register, no metadata words); digits ``d = t + 1`` stored as 2-bit codes
  (rule 2) or 5 digits per byte, ``d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4`` (rule 3b, g160 fills four
  64-bit words). ``T = sum t * m``, partial = ``fp32(fp32(T) * s) * 2**e``.

Padding weights (a row whose K is not a multiple of G) get code 7 (NF4 value 0) / digit 1
(trit 0); their activations are 0 anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from romsim.kernels.dequant_ref import dequant_f32
from romsim.kernels.qmatmul import quantize_act_bfp
from romsim.rtl.params import NF4_FRAC_BITS, NF4_TABLE, CellParams, nf4_fixed_table

NF4_GROUP = 64
TERNARY_GROUP = {"bits": 128, "base3": 160}


@dataclass
class CodebookMatrix:
    """A matrix quantized to nf4 or ternary: codes ``[N, Kp]`` (uint8; digits for ternary),
    per-group fp16 scale ``[N, ng]`` (nf4) or one per-tensor fp16 scale (ternary)."""

    kind: str
    packing: str
    group_size: int
    n: int
    k: int
    codes: np.ndarray
    scale: np.ndarray  # float16 [N, ng] (nf4) or [1, 1] (ternary)

    @property
    def ng(self) -> int:
        return self.codes.shape[1] // self.group_size

    def values(self) -> np.ndarray:
        """The cell's integer weights ``[N, Kp]`` (nf4: fixed-point codebook entries)."""
        if self.kind == "nf4":
            return np.array(nf4_fixed_table(), np.int64)[self.codes]
        return self.codes.astype(np.int64) - 1

    def dequantize(self) -> np.ndarray:
        """Float weights [N, K] (nf4 with the float table; the format's meaning)."""
        if self.kind == "nf4":
            v = np.array(NF4_TABLE, np.float32)[self.codes]
            s = np.repeat(self.scale.astype(np.float32), self.group_size, axis=1)
        else:
            v = self.codes.astype(np.float32) - 1
            s = np.float32(self.scale.reshape(-1)[0])
        return (v * s)[:, : self.k]


def quantize(w: np.ndarray, kind: str, packing: str = "bits") -> CodebookMatrix:
    n, k = w.shape
    g = NF4_GROUP if kind == "nf4" else TERNARY_GROUP[packing]
    kp = -(-k // g) * g
    wp = np.zeros((n, kp), np.float32)
    wp[:, :k] = w
    if kind == "nf4":
        blk = wp.reshape(n, -1, g)
        s16 = np.abs(blk).max(axis=2).astype(np.float16)
        s = s16.astype(np.float32)
        x = blk / np.where(s == 0, 1, s)[..., None]
        tab = np.array(NF4_TABLE, np.float32)
        codes = np.abs(x[..., None] - tab).argmin(axis=-1).astype(np.uint8).reshape(n, kp)
        codes[:, k:] = 7
        return CodebookMatrix(kind, "bits", g, n, k, codes, s16)
    s16 = np.float16(np.abs(w).mean())
    t = np.clip(np.rint(wp / np.float32(s16)), -1, 1).astype(np.int64)
    t[:, k:] = 0
    return CodebookMatrix(kind, packing, g, n, k, (t + 1).astype(np.uint8), np.full((1, 1), s16))


def tile_params(cm: CodebookMatrix, start: int, stop: int, word_bits: int = 64) -> CellParams:
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


def tile_words(cm: CodebookMatrix, start: int, stop: int, word_bits: int = 64) -> np.ndarray:
    """ROM words of row-major groups ``[start, stop)``: each group's code stream (rule 2 or 3b)
    in whole words, then (nf4) the run's metadata from a fresh word (rules 4-6)."""
    p = tile_params(cm, start, stop, word_bits)
    g = cm.group_size
    flat = cm.codes.reshape(-1, g)
    mask = (1 << word_bits) - 1
    words: list[int] = []
    for gi in range(start, stop):
        c = flat[gi].astype(np.int64)
        if cm.packing == "base3":
            d = c.reshape(-1, 5)
            by = d @ np.array([1, 3, 9, 27, 81])
            v = int.from_bytes(by.astype(np.uint8).tobytes(), "little")
            nbits = 8 * len(by)
        else:
            b = p.bits
            v = 0
            for i, x in enumerate(c.tolist()):
                v |= x << (i * b)
            nbits = g * b
        for w in range(-(-nbits // word_bits)):
            words.append((v >> (w * word_bits)) & mask)
    if cm.kind == "nf4":
        sc = cm.scale.reshape(-1)[start:stop].view(np.uint16).astype(np.int64)
        mpw, mb = p.metas_per_word, p.meta_bits
        for i in range(0, len(sc), mpw):
            v = 0
            for j, x in enumerate(sc[i : i + mpw].tolist()):
                v |= x << (j * mb)
            words.append(v)
    assert len(words) == p.rom_rows, (len(words), p.rom_rows)
    return np.array(words, np.uint64)


def golden(
    cm: CodebookMatrix, a: np.ndarray, e: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For mantissas ``a[V, Kp]`` and group exponents ``e[V, ng]``: (T ``[V, n]`` int64, scale
    bits ``[n]`` uint16, fp32 partial bits ``[V, n]`` uint32)."""
    g = cm.group_size
    gidx = np.arange(start, stop)
    rows, kgs = gidx // cm.ng, gidx % cm.ng
    vals = cm.values().reshape(cm.n, cm.ng, g)[rows, kgs]  # [n, g]
    ag = np.asarray(a, np.int64).reshape(a.shape[0], cm.ng, g)[:, kgs]  # [V, n, g]
    t = (ag * vals[None]).sum(axis=2)
    ee = np.asarray(e, np.int64)[:, kgs]
    if cm.kind == "nf4":
        s = cm.scale.reshape(-1)[gidx]
        ee = ee - NF4_FRAC_BITS
    else:
        s = np.full(len(gidx), cm.scale.reshape(-1)[0], np.float16)
    p = dequant_f32(t, s[None, :], ee)
    return t, s.view(np.uint16), np.asarray(p, np.float32).view(np.uint32)


def acts(
    cm: CodebookMatrix, x: np.ndarray, n_random: int, seed: int
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
