"""Codebook formats -- NF4 and ternary (2-bit or base-3 codes) -- with the cell's integer path.

The golden model of the RTL cell's ``CellParams(kind="nf4" | "ternary")`` decode
(:mod:`romsim.rtl.cell`; ``sim/test_codebook_cocotb.py`` compares the simulated cell with these
functions bit for bit). Numpy only, independent of the Numba cores, like
:func:`romsim.kernels.qmatmul.int_group_dots`.

A :class:`CodebookTensor` holds element-ordered codes ``[n, Kp]`` (``Kp`` = K rounded up to the
group; padding weights get the zero code: NF4 index 7, ternary digit 1) and the scales:

* **nf4** (QLoRA / bitsandbytes, groups of 64): 4-bit indices ``q`` into the NormalFloat-4 table,
  one absmax scale per group (``[n, ng]``: fp16 as the cell's metadata field, or fp32 for a
  bitsandbytes tensor, :meth:`CodebookTensor.from_qtensor`).
* **ternary** (BitNet b1.58): digits ``d = t + 1`` with ``t`` in {-1, 0, +1}, one absmean fp16
  scale per *tensor* (``[1, 1]``; the cell holds it in its dequantizer register). Stored as
  2-bit codes (``packing="bits"``, g128, ROM rule 2) or 5 digits per byte
  ``d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4`` (``packing="base3"``, g160 = 32 bytes, rule 3b);
  :func:`pack_codes` / :func:`unpack_codes` convert (bytes 243..255 are never written and decode,
  as the cell's LUT, to five digits 1).

Two paths, as for the affine kinds (:mod:`romsim.kernels.qmatmul`):

* **int** -- what the cell computes. Activations are BFP int8 mantissas ``m`` with one exponent
  ``e`` per group (:func:`~romsim.kernels.qmatmul.quantize_act_bfp`, groups of the format's
  size); per group the integer sum ``T = sum w_i m_i`` (:func:`codebook_group_dots`) and the fp32
  partial ``p = fp32(fp32(T) * s) * 2**(e + exp_offset)`` (:func:`codebook_partials`, the
  kernels' dequantizer rounding :func:`~romsim.kernels.dequant_ref.dequant_f32`); a row sums its
  partials ``((0 + p_0) + p_1) + ...`` in K order (:func:`combine_codebook`). Ternary:
  ``w = TERNARY_TABLE[d]`` (= ``d - 1``), ``exp_offset = 0``. **NF4: the integer path's codebook
  is the 10-bit fixed-point table the hardware stores**, ``w = round(NF4[q] * 2**10)``
  (:data:`NF4_FIXED_TABLE`, :func:`romsim.quant.nf4_fixed_table`; every entry within ``2**-11``
  of bitsandbytes' float table), with ``exp_offset = -10`` folding the ``2**-10`` into the
  exponent. So the int path is bit-exact with the RTL, not with bitsandbytes.
* **float** -- the format's meaning: ``fp32(table[q] * s)`` with bitsandbytes' float NF4 table
  (bit-exact with ``dequantize_4bit``, as ``qmatmul(path="float")`` of an NF4
  :class:`~romsim.kernels.qmatmul.QTensor``), dotted in fp32 (:func:`codebook_qmatmul`). The int
  path differs from it by the BFP activation rounding, fp32 accumulation and (NF4) at most
  ``2**-11 * s`` per weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from romsim.quant import (
    NF4_FRAC_BITS,
    NF4_VALUES,
    TERNARY_GROUP,
    TERNARY_TABLE,
    TRITS_PER_BYTE,
    nf4_fixed_table,
)

from .qmatmul import NF4_BLOCK, QTensor, _pow2_f32, quantize_act_bfp

KINDS = ("nf4", "ternary")
NF4_FIXED_TABLE = np.array(nf4_fixed_table(), np.int64)  # the cell's codebook, 12-bit signed
NF4_FLOAT_TABLE = np.array(NF4_VALUES, np.float32)  # bitsandbytes' (the float path)
TERNARY_VALUES = np.array(TERNARY_TABLE, np.int64)
NF4_ZERO_CODE = 7  # NF4_VALUES[7] == 0
TERNARY_ZERO_DIGIT = 1
_POW3 = 3 ** np.arange(TRITS_PER_BYTE)
# byte -> its 5 base-3 digits (the cell's 243-entry LUT; 243..255 decode as 121 = digits 1)
_BYTES = np.where(np.arange(256) < 243, np.arange(256), 121)
BASE3_LUT = ((_BYTES[:, None] // _POW3) % 3).astype(np.uint8)


@dataclass
class CodebookTensor:
    """An ``[n, k]`` weight in a codebook format: ``codes [n, Kp]`` uint8 (NF4 indices or ternary
    digits), ``scale`` ``[n, ng]`` fp16/fp32 (nf4) or ``[1, 1]`` fp16 (ternary)."""

    kind: str
    packing: str
    group_size: int
    n: int
    k: int
    codes: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be nf4 or ternary (got {self.kind!r})")
        if self.packing not in ("bits", "base3") or (
            self.packing == "base3" and (self.kind != "ternary" or self.group_size % 5)
        ):
            raise ValueError(f"bad packing {self.packing!r} for {self.kind} g{self.group_size}")
        kp = -(-self.k // self.group_size) * self.group_size
        if self.codes.shape != (self.n, kp):
            raise ValueError(f"codes must be [{self.n}, {kp}] (got {self.codes.shape})")
        want = (self.n, self.ng) if self.kind == "nf4" else (1, 1)
        if self.scale.shape != want:
            raise ValueError(f"scale must be {list(want)} (got {list(self.scale.shape)})")

    @property
    def ng(self) -> int:
        """Groups per row."""
        return self.codes.shape[1] // self.group_size

    @property
    def k_padded(self) -> int:
        return self.codes.shape[1]

    @property
    def exp_offset(self) -> int:
        """Added to the activation exponent in the int path's dequantizer (nf4: -10)."""
        return -NF4_FRAC_BITS if self.kind == "nf4" else 0

    def values(self) -> np.ndarray:
        """The int path's integer weights ``[n, Kp]`` (nf4: the fixed-point codebook entries)."""
        tab = NF4_FIXED_TABLE if self.kind == "nf4" else TERNARY_VALUES
        return tab[self.codes]

    def group_scales(self) -> np.ndarray:
        """Scale of every group ``[n, ng]`` (ternary: the tensor scale repeated)."""
        if self.kind == "nf4":
            return self.scale
        return np.broadcast_to(self.scale.reshape(1, 1), (self.n, self.ng))

    def dequantize(self) -> np.ndarray:
        """Float weights ``[n, k]``: ``fp32(table[q] * s)`` (nf4: bitsandbytes' float table)."""
        if self.kind == "nf4":
            v = NF4_FLOAT_TABLE[self.codes]
        else:
            v = TERNARY_VALUES[self.codes].astype(np.float32)
        s = np.repeat(self.group_scales().astype(np.float32), self.group_size, axis=1)
        return (v * s)[:, : self.k]

    @classmethod
    def quantize(cls, w: np.ndarray, kind: str, packing: str = "bits") -> CodebookTensor:
        """The cell's formats from float ``w [n, k]``. nf4: groups of 64, fp16 absmax ``s``,
        the nearest float-table entry to ``w / s`` (fp32; ties to the lower index). ternary:
        ``s = fp16(mean|w|)`` (numpy's fp32 mean), ``t = clip(rint(w / s), -1, 1)``."""
        w = np.asarray(w, np.float32)
        n, k = w.shape
        g = NF4_BLOCK if kind == "nf4" else TERNARY_GROUP[packing]
        kp = -(-k // g) * g
        wp = np.zeros((n, kp), np.float32)
        wp[:, :k] = w
        if kind == "nf4":
            blk = wp.reshape(n, -1, g)
            s16 = np.abs(blk).max(axis=2).astype(np.float16)
            s = s16.astype(np.float32)
            x = blk / np.where(s == 0, 1, s)[..., None]
            codes = np.abs(x[..., None] - NF4_FLOAT_TABLE).argmin(axis=-1).astype(np.uint8)
            codes = codes.reshape(n, kp)
            codes[:, k:] = NF4_ZERO_CODE
            return cls(kind, "bits", g, n, k, codes, s16)
        if kind != "ternary":
            raise ValueError(f"kind must be nf4 or ternary (got {kind!r})")
        s16 = np.float16(np.abs(w).mean())
        t = np.clip(np.rint(wp / np.float32(s16)), -1, 1).astype(np.int64)
        t[:, k:] = 0
        return cls(kind, packing, g, n, k, (t + 1).astype(np.uint8), np.full((1, 1), s16))

    @classmethod
    def from_qtensor(cls, qt: QTensor) -> CodebookTensor:
        """An NF4 :class:`~romsim.kernels.qmatmul.QTensor` (bitsandbytes' codes, fp32 absmax)
        for the int path."""
        if qt.kind != "nf4":
            raise ValueError(f"from_qtensor takes an nf4 QTensor (got {qt.kind})")
        return cls(
            "nf4",
            "bits",
            qt.group_size,
            qt.n,
            qt.k,
            qt.codes().astype(np.uint8),
            np.ascontiguousarray(qt.scale, np.float32),
        )

    @classmethod
    def from_packed(
        cls,
        kind: str,
        packing: str,
        n: int,
        k: int,
        data: np.ndarray,
        scale: np.ndarray,
        group_size: int | None = None,
    ) -> CodebookTensor:
        """From :func:`pack_codes` bytes (``[n * ng, group_bytes]`` uint8)."""
        g = group_size or (NF4_BLOCK if kind == "nf4" else TERNARY_GROUP[packing])
        codes = unpack_codes(data, kind, packing, g).reshape(n, -1)
        return cls(kind, packing, g, n, k, codes, np.asarray(scale))


def group_bytes(kind: str, packing: str, group_size: int) -> int:
    """Bytes of one group's code stream."""
    if packing == "base3":
        return group_size // TRITS_PER_BYTE
    return group_size * (4 if kind == "nf4" else 2) // 8


def pack_codes(ct: CodebookTensor) -> np.ndarray:
    """Each row-major group's code stream as bytes ``[n * ng, group_bytes]``: ``bits`` codes
    LSB first (rule 2: nf4 code ``2j`` in byte ``j``'s low nibble, 2-bit digits 4 a byte), or
    base-3 bytes ``sum d_i 3**i`` of 5 consecutive digits (rule 3b)."""
    c = ct.codes.reshape(-1, ct.group_size).astype(np.int64)
    if ct.packing == "base3":
        return (c.reshape(c.shape[0], -1, TRITS_PER_BYTE) @ _POW3).astype(np.uint8)
    b = 4 if ct.kind == "nf4" else 2
    per = 8 // b
    sh = np.arange(per) * b
    return (c.reshape(c.shape[0], -1, per) << sh).sum(axis=2).astype(np.uint8)


def unpack_codes(data: np.ndarray, kind: str, packing: str, group_size: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: codes ``[groups, group_size]`` uint8 (base-3 through the
    cell's LUT)."""
    by = np.asarray(data, np.uint8).reshape(-1, group_bytes(kind, packing, group_size))
    if packing == "base3":
        return BASE3_LUT[by].reshape(by.shape[0], group_size)
    b = 4 if kind == "nf4" else 2
    sh = (np.arange(8 // b) * b).astype(np.uint8)
    return ((by[..., None] >> sh) & ((1 << b) - 1)).reshape(by.shape[0], group_size)


# ------------------------------------------------------------------------------------------------
# the int path (what the cell computes)


def codebook_group_dots(ct: CodebookTensor, a: np.ndarray) -> np.ndarray:
    """Per-group integer sums ``T [M, n, ng]`` int32, ``sum_i w_i m_i`` of the int path's
    weights (:meth:`CodebookTensor.values`) and int8 mantissas ``a [M, Kp]``."""
    a = np.atleast_2d(np.asarray(a))
    M, g, ng = a.shape[0], ct.group_size, ct.ng
    t = np.einsum(
        "ngi,mgi->mng", ct.values().reshape(ct.n, ng, g), a.astype(np.int64).reshape(M, ng, g)
    )
    assert np.abs(t).max(initial=0) < 2**31
    return t.astype(np.int32)


def dequant_partials(t: np.ndarray, scale: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``fp32(fp32(t) * fp32(scale)) * fp32(2**e)`` elementwise (broadcasting), RNE: the
    cell's dequantizer (equal to :func:`romsim.kernels.dequant_ref.dequant_f32` for fp16
    scales)."""
    tf = np.asarray(t).astype(np.float32)
    s = np.asarray(scale).astype(np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return (tf * s) * _pow2_f32(np.asarray(e))


def codebook_partials(
    ct: CodebookTensor, a: np.ndarray, e: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-major groups ``[start, stop)`` for mantissas ``a [M, Kp]`` and group exponents
    ``e [M, ng]``: (``T`` int64 ``[M, stop - start]``, fp32 partials ``[M, stop - start]``) --
    what a cell holding that run emits."""
    a = np.atleast_2d(np.asarray(a))
    e = np.atleast_2d(np.asarray(e, np.int64))
    g, ng = ct.group_size, ct.ng
    gidx = np.arange(start, stop)
    rows, kgs = gidx // ng, gidx % ng
    vals = ct.values().reshape(ct.n, ng, g)[rows, kgs]  # [run, g]
    ag = a.astype(np.int64).reshape(a.shape[0], ng, g)[:, kgs]  # [M, run, g]
    t = (ag * vals[None]).sum(axis=2)
    s = ct.group_scales().reshape(-1)[gidx]
    return t, dequant_partials(t, s[None, :], e[:, kgs] + ct.exp_offset)


def combine_codebook(ct: CodebookTensor, T: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Row sums ``[M, n]`` fp32 of the partials of ``T [M, n, ng]`` (exponents ``e [M, ng]``),
    ``((0 + p_0) + p_1) + ...`` in K order (:func:`romsim.kernels.qmatmul.combine_int`'s
    order)."""
    M, N, ng = T.shape
    p = dequant_partials(
        T, ct.group_scales()[None], np.asarray(e, np.int64)[:, None, :] + ct.exp_offset
    )
    acc = np.zeros((M, N), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for g in range(ng):
            acc = acc + p[:, :, g]
    return acc


def quantize_act_codebook(
    ct: CodebookTensor, x: np.ndarray, act_bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """BFP activations for ``ct`` from ``x [M, k]`` (zero-padded to Kp, groups of the format's
    size): (mantissas ``[M, Kp]``, exponents ``[M, ng]``)."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    if x.shape[1] != ct.k:
        raise ValueError(f"activation has K={x.shape[1]}, weight expects K={ct.k}")
    xp = np.zeros((x.shape[0], ct.k_padded), np.float32)
    xp[:, : ct.k] = x
    return quantize_act_bfp(xp, ct.group_size, act_bits)


def codebook_qmatmul(
    ct: CodebookTensor, x: np.ndarray, path: str = "float", act_bits: int = 8
) -> np.ndarray:
    """``y = x @ W.T`` for ``x [k]`` or ``x [M, k]``: ``path="int"`` the cell's arithmetic
    (BFP activations, fixed-point NF4 codebook, :func:`combine_codebook`), ``path="float"``
    fp32 ``x @ dequantize().T`` (float table)."""
    x = np.asarray(x, np.float32)
    vec = x.ndim == 1
    x2 = np.atleast_2d(x)
    if path == "float":
        if x2.shape[1] != ct.k:
            raise ValueError(f"activation has K={x2.shape[1]}, weight expects K={ct.k}")
        out = x2 @ ct.dequantize().T
    elif path == "int":
        a, e = quantize_act_codebook(ct, x2, act_bits)
        out = combine_codebook(ct, codebook_group_dots(ct, a), e)
    else:
        raise ValueError(f"path must be 'float' or 'int', got {path!r}")
    return out[0] if vec else out
