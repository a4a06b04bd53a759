"""Quantized GEMV / small-batch GEMM straight from packed ROM words (Numba, no torch).

Two datapaths (see docs/kernels.md for the rounding rules and the int32 accumulator proof):

* **int** -- what the accelerator's L-Unit computes, and the golden reference for the RTL.
  Activations are quantized per weight group to block floating point (int8 mantissas, one
  power-of-two exponent per group, :func:`quantize_act_bfp`); each cell forms the integer dots
  ``D = sum q_i*m_i`` and ``S = sum m_i`` (:func:`int_group_dots` returns them), and dequantizes
  after (:func:`combine_int`). :func:`qmatmul` with ``path="int"`` is a fused, parallel version
  that is bit-identical to ``combine_int(int_group_dots(...))``.
* **float** -- codes dequantized to fp32 on the fly and dotted in fp32 with the fp32 activation,
  reassociated for speed (``s*sum(q*x) + c*sum(x)`` per group, ``c = -s*z`` or the Q4_1 min);
  equal to dequantize-then-dot up to fp32 rounding. :func:`dequantize` gives the fp32 weights.

A weight tensor is a :class:`QTensor`; its words follow :mod:`romsim.rom.layout` (64-bit words),
GGUF blocks :mod:`romsim.kernels.bitpack`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from romsim.quant import NF4_VALUES
from romsim.rom.layout import KERNEL_WORD_BITS, RomLayout

from . import bitpack as bp

# code layouts inside a group's bytes
LAYOUT_STREAM = 0  # LSB-first stream of `bits`-wide unsigned codes (affine, symmetric)
LAYOUT_Q4 = 1  # llama.cpp Q4_x: byte j = element j (low nibble) | element j+16 (high nibble)
LAYOUT_Q8 = 2  # llama.cpp Q8_0: byte j = element j as int8
LAYOUT_Q5 = 3  # llama.cpp Q5_0/Q5_1: qh (4 bytes, bit e = element e's 5th bit), then Q4_x nibbles
# K-quants: the compute group is a sub-block of the 256-weight super-block whose code bytes
# are the ROM group (decoders address sub-block j of super-block gidx // subs)
LAYOUT_Q2K = 4
LAYOUT_Q3K = 5
LAYOUT_Q4K = 6
LAYOUT_Q5K = 7
LAYOUT_Q6K = 8
LAYOUT_NF4 = 9  # bitsandbytes NF4: byte j = element 2j (high nibble) | element 2j+1 (low)
# llama.cpp TQ1_0: qs[48] (5 base-3 digits a byte) then qh[4] (4 a byte), 256-weight blocks read
# in 32-weight compute groups like the K-quants' sub-blocks. TQ2_0's qs is laid out as Q2_K's
# (element 128h + 32s + l = bits 2s of byte 32h + l), so it shares LAYOUT_Q2K's decoder.
LAYOUT_TQ1 = 10
_TQ1_POW3 = np.array(bp.TQ1_POW3, np.int32)
_GGUF_LAYOUT = {
    "q4_0": LAYOUT_Q4,
    "q4_1": LAYOUT_Q4,
    "q8_0": LAYOUT_Q8,
    "q5_0": LAYOUT_Q5,
    "q5_1": LAYOUT_Q5,
    "q2_k": LAYOUT_Q2K,
    "q3_k": LAYOUT_Q3K,
    "q4_k": LAYOUT_Q4K,
    "q5_k": LAYOUT_Q5K,
    "q6_k": LAYOUT_Q6K,
    "tq1_0": LAYOUT_TQ1,
    "tq2_0": LAYOUT_Q2K,
}

KINDS = ("affine", "symmetric", *bp.GGUF_KINDS, "nf4")
NF4_BLOCK = 64  # bitsandbytes' default blocksize (the QLoRA paper's)
# bitsandbytes.functional.get_4bit_type("nf4") (QLoRA, Dettmers et al. 2023), as fp32
NF4_TABLE = np.array(NF4_VALUES, dtype=np.float32)


@dataclass
class QTensor:
    """A quantized ``[n, k]`` weight as it lies in ROM, plus its decoded group metadata.

    ``words``/``meta`` are the ROM words (the bit-exact image); ``scale`` (fp32 of the fp16
    scale or d; K-quants: fp32 ``d*sc`` per sub-block; NF4: the fp32 absmax), ``zero`` (int32:
    affine z, 2**(bits-1) for symmetric, 8 for Q4_0, 16 for Q5_0, 4 for Q3_K, 32 for Q6_K, 1 for
    TQ1_0/TQ2_0, 0 otherwise) and ``minimum`` (fp32 of Q4_1/Q5_1's m, ``-dmin*m`` of
    Q2_K/Q4_K/Q5_K, else 0) are decoded once from ``meta`` -- the hardware's metadata decoder --
    and cached as ``[n, n_groups]`` arrays.

    ``group_size`` is the *compute* group (scales, activation blocks, the int path's dots): the
    ROM group for every kind but the K-quants, whose compute group is the 16- or 32-weight
    sub-block of the 256-weight super-block that is their ROM group (:attr:`rom_group_size`),
    and TQ1_0/TQ2_0 (one d per 256-weight block, compute group 32).
    """

    kind: str
    bits: int
    group_size: int
    n: int
    k: int
    words: np.ndarray
    meta: np.ndarray
    scale: np.ndarray = field(repr=False)
    zero: np.ndarray = field(repr=False)
    minimum: np.ndarray = field(repr=False)
    # (key, pack): the row-interleaved copy the int16-lane GEMVs read (gemv_pack); host-side
    # speed only, never part of the ROM image, built lazily by qmatmul and freed with the object.
    _gemv_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_groups(self) -> int:
        return bp.n_groups(self.k, self.group_size)

    @property
    def k_padded(self) -> int:
        return self.n_groups * self.group_size

    @property
    def layout(self) -> int:
        if self.kind == "nf4":
            return LAYOUT_NF4
        return _GGUF_LAYOUT.get(self.kind, LAYOUT_STREAM)

    @property
    def rom_group_size(self) -> int:
        """Weights per ROM group (the layout's ``G``): 256 for K-quants and TQ1_0/TQ2_0, else
        ``group_size``."""
        return self.rom_layout.group_size

    @property
    def rom_groups(self) -> int:
        """ROM groups of the whole matrix (row-major), what ``words``/``meta`` hold."""
        return self.n * bp.n_groups(self.k, self.rom_group_size)

    @property
    def rom_layout(self) -> RomLayout:
        """The word layout of ``words``/``meta`` (:mod:`romsim.rom.layout`, 64-bit words)."""
        return _layout(self.kind, self.bits, self.group_size)

    @property
    def group_bytes(self) -> int:
        return self.rom_layout.group_bytes

    @property
    def has_min(self) -> bool:
        return self.kind in bp.GGUF_HAS_MIN

    @property
    def rom_bytes(self) -> int:
        return int(self.words.nbytes + self.meta.nbytes)

    def code_bytes(self) -> np.ndarray:
        return self.words.view(np.uint8)

    def gemv_pack(self) -> tuple | None:
        """The row-interleaved copy read by the int16-lane GEMVs (:func:`qmatmul` with M = 1 on
        the int path), or None where they do not apply (other kinds, ``n % RC != 0``).

        Q4_0/Q4_1: ``(P, scale_t, zero_t, min_t)``, ``P[b, g, j, r]`` = code byte ``j`` of group
        ``g`` of row ``b*RC + r`` (uint8 ``[n/RC, ng, 16, RC]``), metadata as ``[n/RC, ng, RC]``
        (the unused one of zero/min a dummy); Q8_0: ``(P, scale_t)`` with the int8 codes
        ``[n/RC, ng, 32, RC]``. One more copy of the code bytes plus one or two fp32/int32
        metadata transposes (SmolLM2-135M: 111.5 MB for its 210 Q4_1 matrices and the Q8_0
        lm_head, next to its 96.4 MB ROM image), so it is built on the first M = 1 int-path call
        only (never for the float or the large-M BLAS path), cached on this object (rebuilt if
        ``words`` or the metadata arrays are replaced; in-place edits are not seen) and freed with
        it or by :meth:`drop_gemv_pack`."""
        if self.n % RC or self.kind not in ("q4_0", "q4_1", "q8_0"):
            return None
        key = (self.words, self.scale, self.zero, self.minimum)
        c = self._gemv_cache
        if c is not None and all(u is v for u, v in zip(c[0], key, strict=True)):
            return c[1]
        self._gemv_cache = None  # free a stale pack before building its successor
        pack = _build_gemv_pack(self)
        self._gemv_cache = (key, pack)
        return pack

    def drop_gemv_pack(self) -> None:
        """Free the cached :meth:`gemv_pack` (the next M = 1 int-path call rebuilds it)."""
        self._gemv_cache = None

    @property
    def gemv_pack_bytes(self) -> int:
        """Bytes held by the cached :meth:`gemv_pack` (0 when none is built)."""
        if self._gemv_cache is None:
            return 0
        return int(sum(a.nbytes for a in self._gemv_cache[1]))

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, raw: np.ndarray, kind: str, n: int, k: int) -> QTensor:
        """Raw llama.cpp blocks (any of :data:`romsim.kernels.bitpack.GGUF_KINDS`) as ROM words,
        bytes unchanged (ROM rules 7, 9)."""
        words, meta, _, _ = bp.gguf_blocks_to_words(raw, kind, n, k)
        return cls.from_words(kind, bp.GGUF_BITS[kind], bp.GGUF_SUB_BLOCK[kind], n, k, words, meta)

    @classmethod
    def from_nf4(cls, packed: np.ndarray, absmax: np.ndarray, n: int, k: int) -> QTensor:
        """bitsandbytes NF4 (``quantize_4bit(W, blocksize=64, quant_type="nf4")`` of a ``[n, k]``
        weight: ``packed`` its uint8 bytes, ``absmax`` its fp32 block absmax) as ROM words: the
        packed bytes unchanged as the code stream, the absmax fp32 bit patterns as the fields
        (ROM rule 7b). ``k`` must be a multiple of 64 (blocks then never straddle rows)."""
        if k % NF4_BLOCK:
            raise ValueError(f"nf4 needs K % {NF4_BLOCK} == 0 (K={k})")
        by = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
        am = np.ascontiguousarray(absmax, dtype=np.float32).reshape(-1)
        ng = k // NF4_BLOCK
        if by.size != n * k // 2 or am.size != n * ng:
            raise ValueError(
                f"nf4 [{n}, {k}] needs {n * k // 2} bytes and {n * ng} absmax, got "
                f"{by.size} and {am.size}"
            )
        lay = _layout("nf4", 4, NF4_BLOCK)
        words = by.view("<u8").astype(np.uint64)
        meta = lay.pack_fields(am.view(np.uint32).astype(np.uint64))
        return cls.from_words("nf4", 4, NF4_BLOCK, n, k, words, meta)

    @classmethod
    def quantize_nf4(cls, w: np.ndarray) -> QTensor:
        """NF4 with bitsandbytes' algorithm (:func:`quantize_nf4`, blocks of 64)."""
        w = np.asarray(w, np.float32)
        packed, absmax = quantize_nf4(w)
        return cls.from_nf4(packed, absmax, *w.shape)

    @classmethod
    def from_affine(
        cls, codes, scale_fp16, zero, bits: int, group_size: int, kind: str = "affine"
    ) -> QTensor:
        n, k = codes.shape
        ng = bp.n_groups(k, group_size)
        lay = _layout(kind, bits, group_size)
        words = lay.pack_codes(codes)
        s16 = np.asarray(scale_fp16, np.float16).reshape(n, ng)
        if kind == "symmetric":
            meta = lay.pack_meta(s16, None)
            z = np.full((n, ng), 1 << (bits - 1), np.int32)
        else:
            z = np.asarray(zero).reshape(n, ng).astype(np.int32)
            meta = lay.pack_meta(s16, z)
        return cls(
            kind,
            bits,
            group_size,
            n,
            k,
            words,
            meta,
            s16.astype(np.float32),
            z,
            np.zeros((n, ng), np.float32),
        )

    @classmethod
    def quantize(cls, w: np.ndarray, bits: int, group_size: int) -> QTensor:
        codes, s, z = bp.quantize_affine(w, bits, group_size)
        return cls.from_affine(codes, s, z, bits, group_size)

    @classmethod
    def from_words(
        cls,
        kind: str,
        bits: int,
        group_size: int,
        n: int,
        k: int,
        words: np.ndarray,
        meta: np.ndarray,
    ) -> QTensor:
        """Rebuild from ROM words alone (decodes the metadata words)."""
        ng = bp.n_groups(k, group_size)
        count = n * ng
        words = np.ascontiguousarray(words, np.uint64)
        meta = np.ascontiguousarray(meta, np.uint64)
        zeros_f = np.zeros((n, ng), np.float32)
        if kind not in KINDS:
            raise ValueError(f"unsupported kind {kind!r}; supported: {', '.join(KINDS)}")
        lay = _layout(kind, bits, group_size)
        if kind in bp.GGUF_KINDS or kind == "nf4":
            fixed = (
                (4, NF4_BLOCK) if kind == "nf4" else (bp.GGUF_BITS[kind], bp.GGUF_SUB_BLOCK[kind])
            )
            if (bits, group_size) != fixed:
                raise ValueError(
                    f"{kind} is fixed at bits={fixed[0]}, group_size={fixed[1]} "
                    f"(got {bits}, {group_size})"
                )
            if k % lay.group_size:
                raise ValueError(f"{kind} needs K % {lay.group_size} == 0 (K={k})")
            count = n * (k // lay.group_size)
            if words.size != lay.code_words(count):
                raise ValueError(
                    f"expected {lay.code_words(count)} code words for {kind} [{n}, {k}], "
                    f"got {words.size}"
                )
        if kind == "nf4":
            f = lay.unpack_fields(meta, count)
            am = f.astype(np.uint32).view(np.float32).reshape(n, ng)
            return cls(kind, 4, NF4_BLOCK, n, k, words, meta, am, np.zeros((n, ng), np.int32),
                       zeros_f)  # fmt: skip
        if kind in bp.GGUF_KINDS and kind not in ("q4_0", "q4_1", "q8_0"):
            sc, mn = bp.gguf_sub_params(lay.unpack_field_bytes(meta, count), kind)
            z = np.full((n, ng), bp.GGUF_ZERO[kind], np.int32)
            return cls(kind, bits, group_size, n, k, words, meta, sc.reshape(n, ng), z,
                       mn.reshape(n, ng))  # fmt: skip
        if kind == "q4_1":
            d, mb = lay.unpack_meta(meta, count)
            mn = mb.astype(np.uint16).view(np.float16).astype(np.float32).reshape(n, ng)
            return cls(
                kind,
                4,
                32,
                n,
                k,
                words,
                meta,
                d.astype(np.float32).reshape(n, ng),
                np.zeros((n, ng), np.int32),
                mn,
            )
        if kind in ("q4_0", "q8_0"):
            d, _ = lay.unpack_meta(meta, count)
            z = np.full((n, ng), 8 if kind == "q4_0" else 0, np.int32)
            return cls(
                kind, bits, 32, n, k, words, meta, d.astype(np.float32).reshape(n, ng), z, zeros_f
            )
        if kind == "symmetric":
            s, _ = lay.unpack_meta(meta, count)
            z = np.full((n, ng), 1 << (bits - 1), np.int32)
        else:  # affine
            s, zz = lay.unpack_meta(meta, count)
            z = zz.astype(np.int32).reshape(n, ng)
        return cls(
            kind,
            bits,
            group_size,
            n,
            k,
            words,
            meta,
            s.astype(np.float32).reshape(n, ng),
            z,
            zeros_f,
        )

    def codes(self) -> np.ndarray:
        """Element-ordered codes ``[n, k]`` (int16; Q8_0 signed; NF4: codebook indices),
        unpacked with numpy."""
        if self.layout == LAYOUT_STREAM:
            return self.rom_layout.unpack_codes(self.words, self.n, self.k).astype(np.int16)
        if self.layout == LAYOUT_NF4:
            by = self.code_bytes()
            return np.stack([by >> 4, by & 15], axis=1).reshape(self.n, self.k).astype(np.int16)
        if self.kind not in ("q4_0", "q4_1", "q8_0"):
            cb = self.code_bytes().reshape(self.rom_groups, self.group_bytes)
            return bp.gguf_block_codes(cb, self.kind).reshape(self.n, self.k)
        by = self.code_bytes().reshape(self.n, self.n_groups, self.group_bytes)
        if self.layout == LAYOUT_Q8:
            return by.view(np.int8).astype(np.int16).reshape(self.n, self.k)
        lo = (by & 15).astype(np.int16)
        hi = (by >> 4).astype(np.int16)
        return np.concatenate([lo, hi], axis=2).reshape(self.n, self.k)


def _layout(kind: str, bits: int, group_size: int) -> RomLayout:
    """The 64-bit-word :class:`RomLayout` of a kernel tensor kind (GGUF kinds fixed)."""
    if kind in bp.GGUF_KINDS:
        return bp.gguf_layout(kind)
    if kind == "nf4":  # rule 7b: bitsandbytes' bytes, fp32 absmax
        return RomLayout(4, NF4_BLOCK, 0, 32, KERNEL_WORD_BITS)
    zero_bits = bits if kind == "affine" else 0
    return RomLayout(bits, group_size, zero_bits, 16, KERNEL_WORD_BITS)


# ------------------------------------------------------------------------------------------------
# Numba cores


@nb.njit(inline="always")
def _decode_group(by, gidx, gbytes, layout, bits, G, q):
    """Decode compute group ``gidx``'s codes (row-major group index) from the byte view of the
    ROM words into ``q[:G]`` (``gbytes``: code bytes per ROM group)."""
    if layout >= 4:  # K-quants, TQ1_0: sub-block j of super-block gidx // subs
        subs = 256 // G
        base = (gidx // subs) * gbytes
        j0 = (gidx % subs) * G
        _decode_kquant(by, base, j0, layout, G, q)
        return
    base = gidx * gbytes
    if layout == 3:
        qh = (
            np.uint32(by[base])
            | (np.uint32(by[base + 1]) << 8)
            | (np.uint32(by[base + 2]) << 16)
            | (np.uint32(by[base + 3]) << 24)
        )
        for j in range(16):
            v = np.int32(by[base + 4 + j])
            q[j] = (v & 15) | (np.int32((qh >> j) & 1) << 4)
            q[j + 16] = (v >> 4) | (np.int32((qh >> (j + 16)) & 1) << 4)
    elif layout == 1:
        for j in range(16):
            v = by[base + j]
            q[j] = v & 15
            q[j + 16] = v >> 4
    elif layout == 2:
        for j in range(32):
            v = np.int32(by[base + j])
            q[j] = v - 256 if v >= 128 else v
    elif bits == 8:
        for i in range(G):
            q[i] = by[base + i]
    elif bits == 4:
        for j in range(G // 2):
            v = by[base + j]
            q[2 * j] = v & 15
            q[2 * j + 1] = v >> 4
    elif bits == 2:
        for j in range(G // 4):
            v = by[base + j]
            q[4 * j] = v & 3
            q[4 * j + 1] = (v >> 2) & 3
            q[4 * j + 2] = (v >> 4) & 3
            q[4 * j + 3] = v >> 6
    elif bits == 3:  # 8 codes in every 3 bytes (G is a multiple of 8; groups start aligned)
        for t in range(G // 8):
            b = base + 3 * t
            v = np.int32(by[b]) | (np.int32(by[b + 1]) << 8) | (np.int32(by[b + 2]) << 16)
            i = 8 * t
            q[i] = v & 7
            q[i + 1] = (v >> 3) & 7
            q[i + 2] = (v >> 6) & 7
            q[i + 3] = (v >> 9) & 7
            q[i + 4] = (v >> 12) & 7
            q[i + 5] = (v >> 15) & 7
            q[i + 6] = (v >> 18) & 7
            q[i + 7] = (v >> 21) & 7
    else:  # generic: codes may straddle bytes and 64-bit words
        mask = (1 << bits) - 1
        for i in range(G):
            p = i * bits
            b0 = p >> 3
            off = p & 7
            v = np.int32(by[base + b0])
            if off + bits > 8:
                v |= np.int32(by[base + b0 + 1]) << 8
            q[i] = (v >> off) & mask


@nb.njit(inline="always")
def _decode_kquant(by, base, j0, layout, G, q):
    """Elements ``j0 .. j0+G-1`` of a K-quant super-block whose code bytes start at ``base``
    (layout rule 9 of romsim.rom.layout; element order of llama.cpp's dequantize_row_*)."""
    for i in range(G):
        e = j0 + i
        if layout == 4:  # Q2_K: qs[32h + l] >> 2s, e = 128h + 32s + l
            q[i] = (np.int32(by[base + 32 * (e >> 7) + (e & 31)]) >> (2 * ((e >> 5) & 3))) & 3
        elif layout == 5:  # Q3_K: hmask[32] then qs[64]; code = low 2 bits + 4 * hmask bit
            lo = (np.int32(by[base + 32 + 32 * (e >> 7) + (e & 31)]) >> (2 * ((e >> 5) & 3))) & 3
            hb = (np.int32(by[base + (e & 31)]) >> (e >> 5)) & 1
            q[i] = lo + 4 * hb
        elif layout == 6:  # Q4_K: qs[32c + l] >> 4h, e = 64c + 32h + l
            q[i] = (np.int32(by[base + 32 * (e >> 6) + (e & 31)]) >> (4 * ((e >> 5) & 1))) & 15
        elif layout == 7:  # Q5_K: qh[32] then qs[128]
            lo = (np.int32(by[base + 32 + 32 * (e >> 6) + (e & 31)]) >> (4 * ((e >> 5) & 1))) & 15
            hb = (np.int32(by[base + (e & 31)]) >> (e >> 5)) & 1
            q[i] = lo | (hb << 4)
        elif layout == 8:  # Q6_K: ql[128] (e = 128h + 64s + l) then qh[64] (e = 128h + 32t + l)
            r = e & 127
            h = e >> 7
            lo = (np.int32(by[base + 64 * h + (r & 63)]) >> (4 * (r >> 6))) & 15
            hi = (np.int32(by[base + 128 + 32 * h + (r & 31)]) >> (2 * (r >> 5))) & 3
            q[i] = lo | (hi << 4)
        else:  # TQ1_0: digit p of byte v is ((v * 3**p) mod 256) * 3 >> 8 (gguf-py's uint8 math)
            if e < 160:  # qs[0:32], e = 32p + j
                v = np.int32(by[base + (e & 31)])
                p = e >> 5
            elif e < 240:  # qs[32:48], e = 160 + 16p + j
                v = np.int32(by[base + 32 + ((e - 160) & 15)])
                p = (e - 160) >> 4
            else:  # qh[0:4], e = 240 + 4p + j
                v = np.int32(by[base + 48 + (e & 3)])
                p = (e - 240) >> 2
            q[i] = (((v * _TQ1_POW3[p]) & 255) * 3) >> 8


@nb.njit(cache=True)
def _group_sums_f32(X, G):
    M, Kp = X.shape
    ng = Kp // G
    xs = np.zeros((M, ng), np.float32)
    for m in range(M):
        for g in range(ng):
            t = np.float32(0.0)
            for i in range(G):
                t += X[m, g * G + i]
            xs[m, g] = t
    return xs


@nb.njit(parallel=True, fastmath=True, cache=True)
def _qmm_float(by, layout, bits, G, gbytes, scale, zero, minimum, has_min, X, out):
    M = X.shape[0]
    N, ng = scale.shape
    xs = _group_sums_f32(X, G)
    for n in nb.prange(N):
        q = np.empty(G, np.float32)
        acc = np.zeros(M, np.float32)
        for g in range(ng):
            _decode_group(by, n * ng + g, gbytes, layout, bits, G, q)
            s = scale[n, g]
            c = minimum[n, g] if has_min else -s * np.float32(zero[n, g])
            k0 = g * G
            for m in range(M):
                xm = X[m, k0 : k0 + G]
                t = np.float32(0.0)
                for i in range(G):
                    t += q[i] * xm[i]
                acc[m] += s * t + c * xs[m, g]
        for m in range(M):
            out[m, n] = acc[m]


@nb.njit(parallel=True, cache=True)
def _qmm_int(by, layout, bits, G, gbytes, scale, zero, minimum, has_min, A, S, P2, out):
    # No fastmath: fp32 operations happen exactly in the documented order (golden rounding).
    M = A.shape[0]
    N, ng = scale.shape
    for n in nb.prange(N):
        q = np.empty(G, np.int32)
        acc = np.zeros(M, np.float32)
        for g in range(ng):
            _decode_group(by, n * ng + g, gbytes, layout, bits, G, q)
            s = scale[n, g]
            z = zero[n, g]
            mn = minimum[n, g]
            k0 = g * G
            for m in range(M):
                am = A[m, k0 : k0 + G]
                d = np.int32(0)
                for i in range(G):
                    d += q[i] * np.int32(am[i])
                if has_min:
                    p = np.float32(d) * s
                    p = p + np.float32(S[m, g]) * mn
                else:
                    p = np.float32(d - z * S[m, g]) * s
                acc[m] += p * P2[m, g]
        for m in range(M):
            out[m, n] = acc[m]


# GEMV (M = 1) fast paths for the 4-bit layouts, decode fused into the dot. Kept as separate
# kernels with the layout fixed in the code: LLVM vectorizes these loops, not a generic one.
# Integer results are identical to the decode-then-dot kernels (same integers, same fp32 order).


@nb.njit(parallel=True, fastmath=True, cache=True)
def _qmv_q4_float(by, hb, scale, zero, minimum, has_min, x, xs, out):
    N, ng = scale.shape
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            base = (n * ng + g) * hb
            bb = by[base : base + hb]  # slices (views) let LLVM vectorize the loop
            xa = x[g * 32 : g * 32 + hb]
            xb = x[g * 32 + hb : g * 32 + 32]
            t = np.float32(0.0)
            for j in range(hb):  # runtime trip count: LLVM's loop vectorizer, not SLP
                c = bb[j]
                t += np.float32(c & 15) * xa[j] + np.float32(c >> 4) * xb[j]
            s = scale[n, g]
            cc = minimum[n, g] if has_min else -s * np.float32(zero[n, g])
            acc += s * t + cc * xs[g]
        out[n] = acc


@nb.njit(parallel=True, cache=True)
def _qmv_q4_int(by, hb, scale, zero, minimum, has_min, a, S, P2, out):
    N, ng = scale.shape
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            base = (n * ng + g) * hb
            bb = by[base : base + hb]
            xa = a[g * 32 : g * 32 + hb]
            xb = a[g * 32 + hb : g * 32 + 32]
            d = np.int32(0)
            for j in range(hb):  # runtime trip count: LLVM's loop vectorizer, not SLP
                c = np.int32(bb[j])
                d += (c & 15) * np.int32(xa[j]) + (c >> 4) * np.int32(xb[j])
            s = scale[n, g]
            if has_min:
                p = np.float32(d) * s
                p = p + np.float32(S[g]) * minimum[n, g]
            else:
                p = np.float32(d - zero[n, g] * S[g]) * s
            acc += p * P2[g]
        out[n] = acc


@nb.njit(parallel=True, fastmath=True, cache=True)
def _qmv_q8_float(sby, G, scale, x, out):
    # Q8_0 / 8-bit symmetric-signed codes read through an int8 view of the ROM words
    N, ng = scale.shape
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            bb = sby[(n * ng + g) * G : (n * ng + g) * G + G]
            xa = x[g * G : g * G + G]
            t = np.float32(0.0)
            for j in range(G):
                t += np.float32(bb[j]) * xa[j]
            acc += scale[n, g] * t
        out[n] = acc


@nb.njit(parallel=True, cache=True)
def _qmv_q8_int(sby, G, scale, a, P2, out):
    N, ng = scale.shape
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            bb = sby[(n * ng + g) * G : (n * ng + g) * G + G]
            xa = a[g * G : g * G + G]
            d = np.int32(0)
            for j in range(G):
                d += np.int32(bb[j]) * np.int32(xa[j])
            p = np.float32(d) * scale[n, g]  # z = 0: fp32(D - 0*S) * d
            acc += p * P2[g]
        out[n] = acc


@nb.njit(parallel=True, fastmath=True, cache=True)
def _qmv_s4_float(by, G, gbytes, scale, zero, x, xs, out):
    # x holds, per group, the even-indexed then the odd-indexed activations (_evens_odds)
    N, ng = scale.shape
    hb = G // 2
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            base = (n * ng + g) * gbytes
            bb = by[base : base + hb]
            xa = x[g * G : g * G + hb]
            xb = x[g * G + hb : g * G + G]
            t = np.float32(0.0)
            for j in range(hb):
                c = bb[j]
                t += np.float32(c & 15) * xa[j] + np.float32(c >> 4) * xb[j]
            s = scale[n, g]
            acc += s * t - s * np.float32(zero[n, g]) * xs[g]
        out[n] = acc


@nb.njit(parallel=True, cache=True)
def _qmv_s4_int(by, G, gbytes, scale, zero, a, S, P2, out):
    N, ng = scale.shape
    hb = G // 2
    for n in nb.prange(N):
        acc = np.float32(0.0)
        for g in range(ng):
            base = (n * ng + g) * gbytes
            bb = by[base : base + hb]
            xa = a[g * G : g * G + hb]
            xb = a[g * G + hb : g * G + G]
            d = np.int32(0)
            for j in range(hb):
                c = np.int32(bb[j])
                d += (c & 15) * np.int32(xa[j]) + (c >> 4) * np.int32(xb[j])
            p = np.float32(d - zero[n, g] * S[g]) * scale[n, g]
            acc += p * P2[g]
        out[n] = acc


# Row-interleaved int16-lane GEMVs (M = 1, int path, Q4_0/Q4_1/Q8_0, n % RC == 0). The kernels
# above reduce one row at a time: Numba widens their int32 dot to int64 lanes and ends every
# 32-weight group with a horizontal reduction. Here the codes of RC consecutive rows are
# interleaved per group (QTensor.gemv_pack), so the dot of one group runs across RC rows at once
# in int16 lanes with no reduction; then each row gets exactly the fp32 combine of the kernels
# above, in the same order (groups in increasing K order, no fastmath), so the outputs are the
# same bits. RC must stay a compile-time constant (a global): with a runtime trip count LLVM
# keeps the row loops in int64 lanes. Nothing here assumes an ISA beyond what LLVM picks for the
# host (SSE2 / AVX2 / AVX-512 alike).
RC = 32

# Exactness of the int16 lanes. Every intermediate wraps modulo 2**16 (integer casts truncate),
# so a lane is exact as long as the *true* value it must finally hold fits in int16:
# * Q4: a half-group dot sum_{j<16} q_j*m_j with 4-bit codes q <= 15 and int8 mantissas
#   |m| <= 128 is at most 16*15*128 = 30,720 < 2**15 (the hardware's mantissas: |m| <= 127);
# * Q8_0: a pair q0*m0 + q1*m1 with q in [-128, 127] is at most 2*128*127 = 32,512 < 2**15 for
#   |m| <= 127, the quantizer's range (act_bits <= 8); an int8 activation holding -128 could
#   reach 2*128*128 = 2**15, so qmatmul checks for it and falls back to _qmv_q8_int. Pairs are
#   widened into an int32 accumulator (|D| <= 32*128*127 = 520,192).
_Q4_HALF_DOT_MAX = 16 * 15 * 128
_Q8_PAIR_MAX = 2 * 128 * 127
assert _Q4_HALF_DOT_MAX < 2**15 and _Q8_PAIR_MAX < 2**15


def _rows_t(m: np.ndarray, dtype) -> np.ndarray:
    """``[n, ng]`` metadata as ``[n/RC, ng, RC]`` (row-interleaved like the codes)."""
    n, ng = m.shape
    return np.ascontiguousarray(np.asarray(m, dtype).reshape(n // RC, RC, ng).transpose(0, 2, 1))


def _build_gemv_pack(qt: QTensor) -> tuple:
    n, ng = qt.n, qt.n_groups
    sc = _rows_t(qt.scale, np.float32)
    if qt.layout == LAYOUT_Q8:
        sby = qt.code_bytes().view(np.int8)
        P = np.ascontiguousarray(sby.reshape(n // RC, RC, ng, 32).transpose(0, 2, 3, 1))
        return P, sc
    P = np.ascontiguousarray(qt.code_bytes().reshape(n // RC, RC, ng, 16).transpose(0, 2, 3, 1))
    if qt.has_min:
        return P, sc, np.zeros((1, 1, RC), np.int32), _rows_t(qt.minimum, np.float32)
    return P, sc, _rows_t(qt.zero, np.int32), np.zeros((1, 1, RC), np.float32)


@nb.njit(parallel=True, cache=True)
def _qmv_q4_int_rows(P, scale_t, zero_t, min_t, has_min, a, S, P2, out):
    # P[b, g, j, r]: byte j (element j low nibble, j+16 high) of group g of row b*RC + r
    NB, ng = P.shape[0], P.shape[1]
    for b in nb.prange(NB):
        acc = np.zeros(RC, np.float32)
        dlo = np.empty(RC, np.int16)
        dhi = np.empty(RC, np.int16)
        for g in range(ng):
            for r in range(RC):
                dlo[r] = 0
                dhi[r] = 0
            for j in range(16):
                xa = np.int16(a[g * 32 + j])
                xb = np.int16(a[g * 32 + 16 + j])
                row = P[b, g, j]
                for r in range(RC):
                    c = row[r]
                    dlo[r] += np.int16(np.int16(c & np.uint8(15)) * xa)
                    dhi[r] += np.int16(np.int16(c >> np.uint8(4)) * xb)
            e2 = P2[g]
            scr = scale_t[b, g]
            if has_min:  # Q4_1: p = fp32(D)*d; p = p + fp32(S)*m
                sg = np.float32(S[g])
                mr = min_t[b, g]
                for r in range(RC):
                    d = np.int32(dlo[r]) + np.int32(dhi[r])
                    p = np.float32(d) * scr[r]
                    p = p + sg * mr[r]
                    acc[r] += p * e2
            else:  # Q4_0: p = fp32(D - z*S)*d
                si = S[g]
                zr = zero_t[b, g]
                for r in range(RC):
                    d = np.int32(dlo[r]) + np.int32(dhi[r])
                    p = np.float32(d - zr[r] * si) * scr[r]
                    acc[r] += p * e2
        for r in range(RC):
            out[b * RC + r] = acc[r]


@nb.njit(parallel=True, cache=True)
def _qmv_q8_int_rows(P, scale_t, a, P2, out):
    # P[b, g, j, r]: int8 code j of group g of row b*RC + r; needs |a| <= 127 (see above)
    NB, ng = P.shape[0], P.shape[1]
    for b in nb.prange(NB):
        acc = np.zeros(RC, np.float32)
        d = np.empty(RC, np.int32)
        for g in range(ng):
            for r in range(RC):
                d[r] = 0
            for j in range(0, 32, 2):
                x0 = np.int16(a[g * 32 + j])
                x1 = np.int16(a[g * 32 + j + 1])
                r0 = P[b, g, j]
                r1 = P[b, g, j + 1]
                for r in range(RC):
                    t = np.int16(np.int16(r0[r]) * x0) + np.int16(np.int16(r1[r]) * x1)
                    d[r] += np.int32(np.int16(t))
            e2 = P2[g]
            scr = scale_t[b, g]
            for r in range(RC):
                p = np.float32(d[r]) * scr[r]  # z = 0: fp32(D - 0*S) * d
                acc[r] += p * e2
        for r in range(RC):
            out[b * RC + r] = acc[r]


@nb.njit(parallel=True, cache=True)
def _decode_codes_f32(by, layout, bits, G, gbytes, n0, n1, ng, out):
    """Codes of rows ``n0 .. n1-1`` as exact fp32 integers, ``out[n1-n0, ng*G]``."""
    for r in nb.prange(n1 - n0):
        q = np.empty(G, np.int32)
        for g in range(ng):
            _decode_group(by, (n0 + r) * ng + g, gbytes, layout, bits, G, q)
            for i in range(G):
                out[r, g * G + i] = q[i]


@nb.njit(parallel=True, cache=True)
def _combine_blas(D, n0, scale_t, zero_t, min_t, has_min, S, P2, out):
    """combine_int's fp32 order over exact-integer D ``[ng, M, n]`` (no fastmath): for every
    output, groups are added in increasing order, starting from 0. Metadata arrays are the
    chunk's ``[ng, n]`` transposes."""
    ng, M, n = D.shape
    for m in nb.prange(M):
        acc = np.zeros(n, np.float32)
        for g in range(ng):
            e2 = P2[m, g]
            sm = S[m, g]
            smf = np.float32(sm)
            dg = D[g, m]
            sg = scale_t[g]
            if has_min:
                mg = min_t[g]
                for j in range(n):
                    p = dg[j] * sg[j]
                    p = p + smf * mg[j]
                    acc[j] += p * e2
            else:
                zg = zero_t[g]
                for j in range(n):
                    p = np.float32(np.int32(dg[j]) - zg[j] * sm) * sg[j]
                    acc[j] += p * e2
        out[m, n0 : n0 + n] = acc


@nb.njit(parallel=True, cache=True)
def _dequant_rows(by, layout, bits, G, gbytes, scale, zero, minimum, has_min, rows, out):
    ng = scale.shape[1]
    K = out.shape[1]
    for r in nb.prange(rows.shape[0]):
        n = rows[r]
        q = np.empty(G, np.int32)
        for g in range(ng):
            _decode_group(by, n * ng + g, gbytes, layout, bits, G, q)
            s = scale[n, g]
            for i in range(G):
                kk = g * G + i
                if kk < K:
                    if has_min:
                        out[r, kk] = s * np.float32(q[i]) + minimum[n, g]
                    else:
                        out[r, kk] = s * np.float32(q[i] - zero[n, g])


@nb.njit(parallel=True, cache=True)
def _nf4_dequant_rows(by, absmax, table, rows, out):
    """``out[r, i] = fp32(table[code] * absmax)``: bitsandbytes' dequantize_4bit, one product."""
    ng = absmax.shape[1]
    for r in nb.prange(rows.shape[0]):
        n = rows[r]
        for g in range(ng):
            s = absmax[n, g]
            base = (n * ng + g) * 32
            for j in range(32):
                v = by[base + j]
                out[r, g * 64 + 2 * j] = table[v >> 4] * s
                out[r, g * 64 + 2 * j + 1] = table[v & 15] * s


@nb.njit(parallel=True, fastmath=True, cache=True)
def _nf4_qmm_float(by, absmax, table, X, out):
    """``y = x @ W.T`` for NF4 words: per block ``absmax * sum(table[q] * x)`` (reassociated)."""
    M = X.shape[0]
    N, ng = absmax.shape
    for n in nb.prange(N):
        acc = np.zeros(M, np.float32)
        for g in range(ng):
            base = (n * ng + g) * 32
            s = absmax[n, g]
            for m in range(M):
                t = np.float32(0.0)
                for j in range(32):
                    v = by[base + j]
                    t += (
                        table[v >> 4] * X[m, g * 64 + 2 * j]
                        + table[v & 15] * X[m, g * 64 + 2 * j + 1]
                    )
                acc[m] += s * t
        for m in range(M):
            out[m, n] = acc[m]


@nb.njit(cache=True)
def _quantize_act_bfp(X, G, A, E, mbits):
    M, Kp = X.shape
    top = 1 << (mbits - 1)  # 128 for int8
    lim = top - 0.5  # mantissas must round into [-(top-1), top-1]
    ng = Kp // G
    for m in range(M):
        for g in range(ng):
            amax = 0.0
            for i in range(G):
                a = abs(np.float64(X[m, g * G + i]))
                if a > amax:
                    amax = a
            if amax == 0.0:
                e = 0
            else:
                fr, ex = math.frexp(amax)  # amax = fr * 2**ex, fr in [0.5, 1)
                e = ex - (mbits - 1) if fr * top < lim else ex - (mbits - 2)
            E[m, g] = e
            inv = math.ldexp(1.0, -e)
            for i in range(G):
                A[m, g * G + i] = np.rint(np.float64(X[m, g * G + i]) * inv)


# ------------------------------------------------------------------------------------------------
# Python faces


# Parallel regions cost a thread wake-up and a barrier (tens of microseconds on an idle host,
# milliseconds when the cores are shared with other processes). Below this many multiply-adds a
# kernel runs on the calling thread only.
PARALLEL_MIN_WORK = 1 << 22


def _evens_odds(v: np.ndarray, group_size: int) -> np.ndarray:
    """Per group, even-indexed elements then odd-indexed ones: the 4-bit stream GEMV kernels
    then read both nibbles of a byte against contiguous activations (vectorizable)."""
    ng = v.shape[0] // group_size
    return np.ascontiguousarray(v.reshape(ng, group_size // 2, 2).transpose(0, 2, 1)).reshape(-1)


def set_threads_for(work: int) -> None:
    """One thread for small work, all of Numba's threads (NUMBA_NUM_THREADS) otherwise."""
    want = 1 if work < PARALLEL_MIN_WORK else nb.config.NUMBA_NUM_THREADS
    if nb.get_num_threads() != want:
        nb.set_num_threads(want)


def _as_2d_padded(x: np.ndarray, k: int, kp: int) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float32)
    vec = x.ndim == 1
    x2 = x.reshape(1, -1) if vec else x
    if x2.shape[1] != k:
        raise ValueError(f"activation has K={x2.shape[1]}, weight expects K={k}")
    if kp != k:
        xp = np.zeros((x2.shape[0], kp), np.float32)
        xp[:, :k] = x2
        x2 = xp
    return np.ascontiguousarray(x2), vec


def quantize_act_bfp(
    x: np.ndarray, group_size: int, act_bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Block-floating-point activations: ``x[M, Kp]`` fp32 (Kp a multiple of group_size) ->
    (int8 mantissas ``[M, Kp]``, int32 exponents ``[M, Kp/group_size]``), ``x ~= m * 2**e``.

    Per group, ``e`` is the smallest integer with ``max|x| * 2**-e < 127.5`` (so every mantissa
    rounds into [-127, 127]); ``m_i = rint(x_i * 2**-e)``, round half to even, computed exactly in
    float64. An all-zero group gets ``e = 0``. ``act_bits`` (default 8, the hardware's) changes
    the mantissa width for exploration (bound ``2**(act_bits-1) - 0.5``; int16 storage above 8);
    the int32 accumulator proof in docs/kernels.md covers ``act_bits <= 8`` only.
    """
    if not 2 <= act_bits <= 16:
        raise ValueError(f"act_bits must be in [2, 16], got {act_bits}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] % group_size:
        raise ValueError("activation length must be a multiple of group_size (pad with zeros)")
    a = np.empty(x.shape, np.int8 if act_bits <= 8 else np.int16)
    e = np.empty((x.shape[0], x.shape[1] // group_size), np.int32)
    _quantize_act_bfp(x, group_size, a, e, act_bits)
    return a, e


def _pow2_f32(e: np.ndarray) -> np.ndarray:
    return np.ldexp(np.float32(1.0), e.astype(np.int32)).astype(np.float32)


def _meta_args(qt: QTensor):
    return (
        qt.code_bytes(),
        qt.layout,
        qt.bits,
        qt.group_size,
        qt.group_bytes,
        np.ascontiguousarray(qt.scale, np.float32),
        np.ascontiguousarray(qt.zero, np.int32),
        np.ascontiguousarray(qt.minimum, np.float32),
        qt.has_min,
    )


def quantize_act(x: np.ndarray, k: int, group_size: int, act_bits: int = 8):
    """Int-path activation operand for a ``K = k`` weight of ``group_size``: (int8 mantissas,
    int32 group sums S, fp32 ``2**e``). Pass it as ``qmatmul(..., act=...)`` to share one
    quantization between matrices that read the same input (q/k/v, gate/up), as the chip does."""
    kp = -(-k // group_size) * group_size
    x2, _ = _as_2d_padded(x, k, kp)
    a, e = quantize_act_bfp(x2, group_size, act_bits)
    s = a.reshape(a.shape[0], -1, group_size).sum(axis=2, dtype=np.int32)
    return a, s, _pow2_f32(e)


NF4_INT_REFUSAL = (
    "nf4 has no integer path (its 16 codebook values are not integers); use path='float'"
)


def _check_int(qt: QTensor) -> None:
    if qt.kind == "nf4":
        raise ValueError(NF4_INT_REFUSAL)


# The row-interleaved int16-lane GEMVs (_qmv_q4_int_rows, _qmv_q8_int_rows) for M = 1 on the
# int path; False runs the per-row kernels _qmv_q4_int / _qmv_q8_int instead (same bits; for
# comparisons, or to avoid the pack's memory).
INT16_GEMV = True


def _int16_gemv_pack(qt: QTensor, a: np.ndarray) -> tuple | None:
    """The pack for an int16-lane GEMV of ``qt`` with mantissas ``a``, or None (then the per-row
    kernels run): Q4_0/Q4_1/Q8_0, ``n % RC == 0``, int8 mantissas (act_bits <= 8), and for
    Q8_0 none equal to -128 (the quantizer never writes it; a caller's ``act`` might)."""
    if not INT16_GEMV or qt.n % RC or qt.kind not in ("q4_0", "q4_1", "q8_0"):
        return None
    if a.dtype != np.int8 or (qt.layout == LAYOUT_Q8 and a.size and a.min() < -127):
        return None
    return qt.gemv_pack()


def qmatmul(
    qt: QTensor, x: np.ndarray, path: str = "float", act_bits: int = 8, act=None
) -> np.ndarray:
    """``y = x @ W.T`` for ``x[K]`` or ``x[M, K]`` with W read from the ROM words of ``qt``
    (``act_bits``: activation mantissa width of the int path; ``act``: a precomputed
    :func:`quantize_act` result for ``x``). NF4 has the float path only."""
    x2, vec = _as_2d_padded(x, qt.k, qt.k_padded)
    out = np.empty((x2.shape[0], qt.n), np.float32)
    set_threads_for(x2.shape[0] * qt.n * qt.k_padded)
    if qt.kind == "nf4":
        if path == "int":
            raise ValueError(NF4_INT_REFUSAL)
        if path != "float":
            raise ValueError(f"path must be 'float' or 'int', got {path!r}")
        if x2.shape[0] >= BLAS_MIN_M:
            with _single_thread_blas():
                out = x2 @ dequantize(qt).T
        else:
            _nf4_qmm_float(qt.code_bytes(), _meta_args(qt)[5], NF4_TABLE, x2, out)
        return out[0] if vec else out
    if x2.shape[0] >= BLAS_MIN_M and path in ("float", "int"):
        if path == "int" and act is None:
            act = quantize_act(x2, qt.k_padded, qt.group_size, act_bits)
        out = _qmm_blas(qt, x2, path, act)
        return out[0] if vec else out
    if path == "float":
        fast = x2.shape[0] == 1 and qt.bits == 4 and qt.layout in (LAYOUT_Q4, LAYOUT_STREAM)
        if x2.shape[0] == 1 and qt.layout == LAYOUT_Q8:
            _qmv_q8_float(qt.code_bytes().view(np.int8), 32, _meta_args(qt)[5], x2[0], out[0])
        elif fast:
            xs = x2[0].reshape(-1, qt.group_size).sum(axis=1, dtype=np.float32)
            if qt.layout == LAYOUT_Q4:
                _qmv_q4_float(qt.code_bytes(), 16, *_meta_args(qt)[5:9], x2[0], xs, out[0])
            else:
                _qmv_s4_float(
                    qt.code_bytes(),
                    qt.group_size,
                    qt.group_bytes,
                    *_meta_args(qt)[5:7],
                    _evens_odds(x2[0], qt.group_size),
                    xs,
                    out[0],
                )
        else:
            _qmm_float(*_meta_args(qt), x2, out)
    elif path == "int":
        _check_int(qt)
        a, s, p2 = (
            act if act is not None else quantize_act(x2, qt.k_padded, qt.group_size, act_bits)
        )
        pack = _int16_gemv_pack(qt, a) if x2.shape[0] == 1 and act_bits <= 8 else None
        if pack is not None and qt.layout == LAYOUT_Q8:
            _qmv_q8_int_rows(*pack, a[0], p2[0], out[0])
        elif pack is not None:
            _qmv_q4_int_rows(*pack, qt.has_min, a[0], s[0], p2[0], out[0])
        elif x2.shape[0] == 1 and qt.layout == LAYOUT_Q8 and act_bits <= 8:
            _qmv_q8_int(qt.code_bytes().view(np.int8), 32, _meta_args(qt)[5], a[0], p2[0], out[0])
        elif (
            x2.shape[0] == 1
            and qt.bits == 4
            and qt.layout in (LAYOUT_Q4, LAYOUT_STREAM)
            and act_bits <= 8
        ):
            if qt.layout == LAYOUT_Q4:
                _qmv_q4_int(qt.code_bytes(), 16, *_meta_args(qt)[5:9], a[0], s[0], p2[0], out[0])
            else:
                _qmv_s4_int(
                    qt.code_bytes(),
                    qt.group_size,
                    qt.group_bytes,
                    *_meta_args(qt)[5:7],
                    _evens_odds(a[0], qt.group_size),
                    s[0],
                    p2[0],
                    out[0],
                )
        else:
            _qmm_int(*_meta_args(qt), a, s, p2, out)
    else:
        raise ValueError(f"path must be 'float' or 'int', got {path!r}")
    return out[0] if vec else out


# Large-M (prefill) path: codes decoded once per call, the dots done by BLAS (numpy matmul).
# Int path: codes and mantissas are integers held exactly in fp32, every product and partial sum
# of a group is an integer below 2**23 (docs/kernels.md), so fp32 BLAS returns the exact integer
# D in any summation order; the dequantization then follows combine_int's fp32 order exactly.
BLAS_MIN_M = 16
_BLAS_CHUNK_FLOATS = 1 << 24


@functools.lru_cache(maxsize=1)
def _openblas_threads_api():
    """(get, set) of numpy's bundled OpenBLAS thread count, or None (then nothing is changed).
    The prefill path issues hundreds to thousands of small GEMMs; OpenBLAS threads waking for
    each one cost more than they save, and tens of seconds per prefill when the cores are shared
    with other processes, so these calls run single-threaded."""
    import ctypes
    import glob
    import os

    root = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(root, "libscipy_openblas*.so"))):
        try:
            lib = ctypes.CDLL(path)
            get = lib.scipy_openblas_get_num_threads64_
            put = lib.scipy_openblas_set_num_threads64_
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_int
        put.argtypes = [ctypes.c_int]
        return get, put
    return None


@contextlib.contextmanager
def _single_thread_blas():
    api = _openblas_threads_api()
    if api is None:
        yield
        return
    get, put = api
    old = get()
    put(1)
    try:
        yield
    finally:
        put(old)


def _blas_rows(qt: QTensor, m: int) -> int:
    return max(1, min(qt.n, _BLAS_CHUNK_FLOATS // max(1, m * qt.n_groups)))


def _qmm_blas(qt: QTensor, x2: np.ndarray, path: str, act) -> np.ndarray:
    M, G, ng = x2.shape[0], qt.group_size, qt.n_groups
    out = np.empty((M, qt.n), np.float32)
    by, layout, bits, _, gbytes = _meta_args(qt)[:5]
    if path == "int":
        a, S, p2 = act
        ag = np.ascontiguousarray(a.reshape(M, ng, G).transpose(1, 0, 2), dtype=np.float32)
    step = _blas_rows(qt, M)
    for n0 in range(0, qt.n, step):
        n1 = min(qt.n, n0 + step)
        codes = np.empty((n1 - n0, ng * G), np.float32)
        set_threads_for((n1 - n0) * ng * G * 4)
        _decode_codes_f32(by, layout, bits, G, gbytes, n0, n1, ng, codes)
        sc = qt.scale[n0:n1].astype(np.float32)
        if path == "float":
            if qt.has_min:
                w = codes.reshape(n1 - n0, ng, G) * sc[:, :, None] + qt.minimum[n0:n1, :, None]
            else:
                zz = qt.zero[n0:n1].astype(np.float32)[:, :, None]
                w = (codes.reshape(n1 - n0, ng, G) - zz) * sc[:, :, None]
            with _single_thread_blas():
                out[:, n0:n1] = x2 @ w.reshape(n1 - n0, ng * G).T
            continue
        qg = np.ascontiguousarray(codes.reshape(n1 - n0, ng, G).transpose(1, 2, 0))
        with _single_thread_blas():
            D = np.matmul(ag, qg)  # [ng, M, n] exact integers in fp32
        set_threads_for(D.size * 4)
        _combine_blas(
            D,
            n0,
            np.ascontiguousarray(sc.T),
            np.ascontiguousarray(qt.zero[n0:n1].T, dtype=np.int32),
            np.ascontiguousarray(qt.minimum[n0:n1].T, dtype=np.float32),
            qt.has_min,
            S,
            p2,
            out,
        )
    return out


def dequantize(qt: QTensor, rows: np.ndarray | None = None) -> np.ndarray:
    """fp32 weights ``[len(rows) or n, k]``: ``s*(q - z)`` (one rounding) or, for Q4_1,
    ``d*q + m`` (two roundings, as llama.cpp)."""
    r = np.arange(qt.n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64).reshape(-1)
    if r.size and (r.min() < 0 or r.max() >= qt.n):
        raise IndexError(f"row index out of range [0, {qt.n})")
    out = np.empty((r.size, qt.k), np.float32)
    set_threads_for(r.size * qt.k)
    if qt.kind == "nf4":
        _nf4_dequant_rows(qt.code_bytes(), _meta_args(qt)[5], NF4_TABLE, r, out)
        return out
    _dequant_rows(*_meta_args(qt), r, out)
    return out


def nf4_quantize_bounds() -> np.ndarray:
    """bitsandbytes' NF4 decision thresholds: fp32 midpoints of neighbouring table entries."""
    return ((NF4_TABLE[:-1] + NF4_TABLE[1:]) / np.float32(2)).astype(np.float32)


def quantize_nf4(w: np.ndarray, blocksize: int = NF4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """bitsandbytes' ``quantize_4bit(quant_type="nf4")`` algorithm in numpy (its CPU / default
    backend): per block of ``blocksize`` consecutive elements of the flattened tensor,
    ``absmax = max|w|`` (fp32), ``x = clip(w * fp32(1 / max(absmax, 1e-38)), -1, 1)``, code =
    the number of thresholds below ``x`` (``torch.bucketize``, right=False), two codes a byte,
    the even element in the high nibble. Returns (packed uint8 ``[size/2]``, absmax fp32).
    Whole blocks only (``size % blocksize == 0``)."""
    flat = np.ascontiguousarray(w, dtype=np.float32).reshape(-1)
    if flat.size % blocksize:
        raise ValueError(f"nf4 needs whole blocks of {blocksize} (size {flat.size})")
    blk = flat.reshape(-1, blocksize)
    absmax = np.abs(blk).max(axis=1).astype(np.float32)
    inv = (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    x = np.clip(blk * inv[:, None], np.float32(-1), np.float32(1)).reshape(-1)
    q = np.searchsorted(nf4_quantize_bounds(), x, side="left").astype(np.uint8)
    return ((q[0::2] << np.uint8(4)) | q[1::2]).astype(np.uint8), absmax


# ------------------------------------------------------------------------------------------------
# Golden integer reference (numpy, independent of the Numba cores)


def int_group_dots(qt: QTensor, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pure-integer cell outputs. ``a``: int8 mantissas ``[M, Kp]`` (from
    :func:`quantize_act_bfp`). Returns ``D`` int32 ``[M, N, ng]`` (``sum_i q_i*m_i``; Q8_0 codes
    signed) and ``S`` int32 ``[M, ng]`` (``sum_i m_i``)."""
    _check_int(qt)
    a = np.asarray(a)
    M = a.shape[0]
    G, ng = qt.group_size, qt.n_groups
    codes = np.zeros((qt.n, qt.k_padded), np.int64)
    codes[:, : qt.k] = qt.codes()
    ag = a.astype(np.int64).reshape(M, ng, G)
    d = np.einsum("ngi,mgi->mng", codes.reshape(qt.n, ng, G), ag)
    s = ag.sum(axis=2)
    assert np.abs(d).max(initial=0) < 2**31 and np.abs(s).max(initial=0) < 2**31
    return d.astype(np.int32), s.astype(np.int32)


def combine_int(qt: QTensor, D: np.ndarray, S: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Dequantize cell outputs exactly as the hardware does (all fp32, round to nearest even):

    affine/symmetric/Q4_0/Q8_0: ``p = fp32(D - z*S) * s``; Q4_1: ``p = fp32(D)*d + fp32(S)*m``
    (two products, one sum, each rounded); then ``p *= 2**e`` (exact) and
    ``y = (((0 + p_0) + p_1) + ...)`` over groups in increasing K order.

    Q5_0, Q3_K and Q6_K follow the z-point rule (z = 16, 4, 32; K-quants' ``s = d*sc`` per
    sub-block); Q5_1, Q2_K, Q4_K, Q5_K the minimum rule (``m`` = Q5_1's m or ``-dmin*mn``).
    """
    _check_int(qt)
    M, N, ng = D.shape
    s = qt.scale.astype(np.float32)[None]
    if qt.has_min:
        p = D.astype(np.float32) * s
        p = p + S[:, None, :].astype(np.float32) * qt.minimum.astype(np.float32)[None]
    else:
        t = D.astype(np.int64) - qt.zero.astype(np.int64)[None] * S[:, None, :].astype(np.int64)
        p = t.astype(np.float32) * s
    p = p * _pow2_f32(e)[:, None, :]
    acc = np.zeros((M, N), np.float32)
    for g in range(ng):
        acc = acc + p[:, :, g]
    return acc
