"""GGUF blocks and the affine quantizer on top of the ROM word layout (numpy, no numba, no torch).

The ROM word layout itself -- codes as word-aligned little-endian bit streams, metadata fields
packed several to a word -- is defined once in :mod:`romsim.rom.layout` (:class:`RomLayout`);
the kernels use it at :data:`~romsim.rom.layout.KERNEL_WORD_BITS` (64-bit words, ``numpy.uint64``
in host order, read through a ``uint8`` view: the little-endian byte stream, the layout module
checks the host at import). This module adds:

* GGUF blocks (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1: 32 weights per block; the K-quants Q2_K ... Q6_K
  and the ternary TQ1_0, TQ2_0: 256) <-> ROM words, bit-exact with llama.cpp (the layout's rules
  7, 9, 9b): a block's code bytes are the group's code stream in llama.cpp's element order, its
  metadata bytes (``d``, Q4_1's ``m``, ...) the group's metadata field.
* :func:`quantize_affine` / :func:`dequantize_affine`: the re-quantizer for 2/3/4/8-bit images.
"""

from __future__ import annotations

import numpy as np

from romsim.rom.layout import KERNEL_WORD_BITS, RomLayout, n_groups

AFFINE_BITS = (2, 3, 4, 8)
GGUF_BLOCK = 32  # weights per block of the 32-weight kinds
QK_K = 256  # weights per K-quant super-block (and TQ1_0/TQ2_0 block)

# A block's byte ranges in llama.cpp's struct order: (name, offset, length, "code" | "meta")
# (ROM rule 7/9: code bytes -> the group's stream, meta bytes -> its field, each in this order).
GGUF_SEGMENTS: dict[str, tuple[tuple[str, int, int, str], ...]] = {
    "q4_0": (("d", 0, 2, "meta"), ("qs", 2, 16, "code")),
    "q4_1": (("d", 0, 2, "meta"), ("m", 2, 2, "meta"), ("qs", 4, 16, "code")),
    "q8_0": (("d", 0, 2, "meta"), ("qs", 2, 32, "code")),
    "q5_0": (("d", 0, 2, "meta"), ("qh", 2, 4, "code"), ("qs", 6, 16, "code")),
    "q5_1": (("d", 0, 2, "meta"), ("m", 2, 2, "meta"), ("qh", 4, 4, "code"), ("qs", 8, 16, "code")),
    "q2_k": (("scales", 0, 16, "meta"), ("qs", 16, 64, "code"), ("d", 80, 2, "meta"),
             ("dmin", 82, 2, "meta")),
    "q3_k": (("hmask", 0, 32, "code"), ("qs", 32, 64, "code"), ("scales", 96, 12, "meta"),
             ("d", 108, 2, "meta")),
    "q4_k": (("d", 0, 2, "meta"), ("dmin", 2, 2, "meta"), ("scales", 4, 12, "meta"),
             ("qs", 16, 128, "code")),
    "q5_k": (("d", 0, 2, "meta"), ("dmin", 2, 2, "meta"), ("scales", 4, 12, "meta"),
             ("qh", 16, 32, "code"), ("qs", 48, 128, "code")),
    "q6_k": (("ql", 0, 128, "code"), ("qh", 128, 64, "code"), ("scales", 192, 16, "meta"),
             ("d", 208, 2, "meta")),
    # ternary (llama.cpp block_tq1_0 / block_tq2_0): one fp16 d per 256 weights, w = d*(q - 1)
    "tq1_0": (("qs", 0, 48, "code"), ("qh", 48, 4, "code"), ("d", 52, 2, "meta")),
    "tq2_0": (("qs", 0, 64, "code"), ("d", 64, 2, "meta")),
}  # fmt: skip
GGUF_KINDS = tuple(GGUF_SEGMENTS)
KQUANT_KINDS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
TERNARY_GGUF_KINDS = ("tq1_0", "tq2_0")
SUPER_BLOCK_KINDS = KQUANT_KINDS + TERNARY_GGUF_KINDS  # 256-weight ROM groups
# TQ1_0's code bytes hold base-3 digits (5 a byte in qs, 4 a byte in qh: 48*5 + 4*4 = 256) as
# llama.cpp's fixed-point fractions: digit p of byte v is ((v * 3**p) mod 256) * 3 >> 8
# (gguf-py's uint8 arithmetic). The 52 bytes are the ROM layout's base-3 stream (rule 3b
# counting: 8 * ceil(256 / 5) bits).
TQ1_POW3 = (1, 3, 9, 27, 81)
TQ1_DIGITS = (((np.arange(256)[:, None] * np.array(TQ1_POW3)) % 256) * 3 >> 8).astype(np.uint8)
GGUF_BLOCK_BYTES = {k: sum(seg[2] for seg in v) for k, v in GGUF_SEGMENTS.items()}
GGUF_QS_BYTES = {  # code bytes per block
    k: sum(seg[2] for seg in v if seg[3] == "code") for k, v in GGUF_SEGMENTS.items()
}
GGUF_META_BYTES = {k: GGUF_BLOCK_BYTES[k] - GGUF_QS_BYTES[k] for k in GGUF_SEGMENTS}
GGUF_BITS = {  # the kernels' unsigned code width (TQ1_0: a base-3 digit, decoded to 2 bits)
    "q4_0": 4, "q4_1": 4, "q8_0": 8, "q5_0": 5, "q5_1": 5,
    "q2_k": 2, "q3_k": 3, "q4_k": 4, "q5_k": 5, "q6_k": 6, "tq1_0": 2, "tq2_0": 2,
}  # fmt: skip
GGUF_PACKING = {k: ("base3" if k == "tq1_0" else "bits") for k in GGUF_SEGMENTS}
GGUF_BLOCK_WEIGHTS = {k: (QK_K if k in SUPER_BLOCK_KINDS else GGUF_BLOCK) for k in GGUF_SEGMENTS}
# metadata field split (romsim.quant._GGUF_FIXED / _GGUF_SUB_SCALE_BITS): fp16 d, then the
# fp16 minimum / dmin (zero_bits), then packed sub-block scales (sub_scale_bits)
GGUF_ZERO_BITS = {
    k: (16 if k in ("q4_1", "q5_1", "q2_k", "q4_k", "q5_k") else 0) for k in GGUF_SEGMENTS
}
GGUF_SUB_SCALE_BITS = {k: 8 * GGUF_META_BYTES[k] - 16 - GGUF_ZERO_BITS[k] for k in GGUF_SEGMENTS}
# the kernels' compute group: the block (32-weight kinds) or the K-quant sub-block; TQ1_0/TQ2_0
# have one d per 256 weights, their compute group (the activation block) is 32 weights
GGUF_SUB_BLOCK = {
    "q4_0": 32, "q4_1": 32, "q8_0": 32, "q5_0": 32, "q5_1": 32,
    "q2_k": 16, "q3_k": 16, "q4_k": 32, "q5_k": 32, "q6_k": 16, "tq1_0": 32, "tq2_0": 32,
}  # fmt: skip
# the kernels' per-compute-group zero point (w = s*(q - z)); kinds with a minimum have z = 0;
# TQ1_0/TQ2_0: digit q in {0, 1, 2} is the ternary weight q - 1 (TQ2_0's never-written code 3
# is +2, as in llama.cpp and gguf-py)
GGUF_ZERO = {
    "q4_0": 8, "q4_1": 0, "q8_0": 0, "q5_0": 16, "q5_1": 0,
    "q2_k": 0, "q3_k": 4, "q4_k": 0, "q5_k": 0, "q6_k": 32, "tq1_0": 1, "tq2_0": 1,
}  # fmt: skip
GGUF_HAS_MIN = ("q4_1", "q5_1", "q2_k", "q4_k", "q5_k")

__all__ = [
    "AFFINE_BITS",
    "GGUF_BLOCK",
    "GGUF_BLOCK_BYTES",
    "GGUF_KINDS",
    "GGUF_QS_BYTES",
    "GGUF_SEGMENTS",
    "KQUANT_KINDS",
    "QK_K",
    "SUPER_BLOCK_KINDS",
    "TERNARY_GGUF_KINDS",
    "dequantize_affine",
    "gguf_block_codes",
    "gguf_blocks_to_words",
    "gguf_layout",
    "gguf_sub_params",
    "n_groups",
    "quantize_affine",
    "words_to_gguf_blocks",
]


def gguf_layout(kind: str) -> RomLayout:
    """The :class:`RomLayout` of a GGUF block kind in the kernels' 64-bit words (rules 7, 9,
    9b)."""
    return RomLayout(
        GGUF_BITS[kind],
        GGUF_BLOCK_WEIGHTS[kind],
        GGUF_ZERO_BITS[kind],
        16,
        KERNEL_WORD_BITS,
        packing=GGUF_PACKING[kind],
        sub_scale_bits=GGUF_SUB_SCALE_BITS[kind],
    )


# --------------------------------------------------------------------------------------------
# Affine quantization (the re-quantizer for 2/3/4/8-bit ROM images)


def quantize_affine(
    w: np.ndarray, bits: int, group_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min/max affine quantization along K: returns (codes uint8[N,K], scale fp16[N,ng],
    zero uint8[N,ng]) with ``w ~= s * (q - z)``.

    Per group the range is widened to include 0 (so the zero point is an integer in range);
    ``s = (max - min) / (2**bits - 1)`` rounded to fp16 (1.0 for an all-zero group),
    ``z = clip(rint(-min / s), 0, 2**bits - 1)``, ``q = clip(rint(w / s) + z, 0, 2**bits - 1)``
    with ``s`` the stored fp16 value; rint rounds half to even.
    """
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    ng = n_groups(k, group_size)
    qmax = (1 << bits) - 1
    wp = np.zeros((n, ng * group_size), dtype=np.float32)
    wp[:, :k] = w
    g = wp.reshape(n, ng, group_size)
    # padding zeros are inside [min, max] after widening to 0, so they do not move the range
    lo = np.minimum(g.min(axis=2), 0.0)
    hi = np.maximum(g.max(axis=2), 0.0)
    s = ((hi - lo) / qmax).astype(np.float16)
    s[s == 0] = np.float16(1.0)
    s32 = s.astype(np.float32)
    z = np.clip(np.rint(-lo / s32), 0, qmax)
    q = np.clip(np.rint(g / s32[:, :, None]) + z[:, :, None], 0, qmax)
    codes = q.reshape(n, ng * group_size)[:, :k].astype(np.uint8)
    return codes, s, z.astype(np.uint8)


def dequantize_affine(
    codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, group_size: int
) -> np.ndarray:
    """``w = s * (q - z)`` in fp32 (numpy reference; (q - z) exact, one rounding)."""
    n, k = codes.shape
    ng = n_groups(k, group_size)
    s = np.repeat(np.asarray(scale, np.float32).reshape(n, ng), group_size, axis=1)[:, :k]
    z = np.repeat(np.asarray(zero, np.int32).reshape(n, ng), group_size, axis=1)[:, :k]
    return (s * (codes.astype(np.int32) - z).astype(np.float32)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# GGUF blocks <-> ROM words


def _split_blocks(raw: np.ndarray, kind: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw GGUF bytes of ``[N, K]`` -> (code bytes ``[blocks, qs]``, meta bytes ``[blocks, m]``),
    each the block's segments of that class in block order."""
    if kind not in GGUF_KINDS:
        raise ValueError(f"not a GGUF block kind: {kind}")
    bw = GGUF_BLOCK_WEIGHTS[kind]
    if k % bw:
        raise ValueError(f"GGUF {kind} needs K % {bw} == 0 (K={k})")
    bb = GGUF_BLOCK_BYTES[kind]
    nb = k // bw
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != n * nb * bb:
        raise ValueError(f"expected {n * nb * bb} bytes for {kind} [{n}, {k}], got {raw.size}")
    blocks = raw.reshape(n * nb, bb)
    segs = GGUF_SEGMENTS[kind]
    code = np.concatenate([blocks[:, o : o + ln] for _, o, ln, c in segs if c == "code"], axis=1)
    meta = np.concatenate([blocks[:, o : o + ln] for _, o, ln, c in segs if c == "meta"], axis=1)
    return np.ascontiguousarray(code), np.ascontiguousarray(meta)


def _meta_offset(kind: str, name: str) -> int:
    """Byte offset of segment ``name`` inside the kind's metadata field."""
    off = 0
    for nm, _, ln, c in GGUF_SEGMENTS[kind]:
        if c != "meta":
            continue
        if nm == name:
            return off
        off += ln
    raise KeyError(name)


def _f16_at(meta_bytes: np.ndarray, kind: str, name: str) -> np.ndarray:
    o = _meta_offset(kind, name)
    return np.ascontiguousarray(meta_bytes[:, o : o + 2]).view(np.float16).reshape(-1)


def gguf_blocks_to_words(
    raw: np.ndarray, kind: str, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Split raw GGUF bytes of a ``[N, K]`` tensor into (code words, meta words, d fp16, m fp16).

    The code words hold the blocks' code bytes unchanged (padded to whole 64-bit words per
    block: Q5_0/Q5_1), the meta words the blocks' metadata bytes unchanged (rules 7 and 9 of
    :mod:`romsim.rom.layout`); ``d`` is every block's fp16 d ``[N, blocks]``, ``m`` the Q4_1/Q5_1
    minimum or the K-quant dmin (None without one). :func:`words_to_gguf_blocks` rebuilds the
    identical bytes.
    """
    code, metab = _split_blocks(raw, kind, n, k)
    lay = gguf_layout(kind)
    nblk = code.shape[0]
    padded = np.zeros((nblk, lay.group_bytes), np.uint8)
    padded[:, : code.shape[1]] = code
    words = padded.reshape(-1).view("<u8").astype(np.uint64, copy=False)
    meta = lay.pack_field_bytes(metab)
    nb = k // GGUF_BLOCK_WEIGHTS[kind]
    d = _f16_at(metab, kind, "d").reshape(n, nb)
    mname = {"q4_1": "m", "q5_1": "m", "q2_k": "dmin", "q4_k": "dmin", "q5_k": "dmin"}.get(kind)
    m = _f16_at(metab, kind, mname).reshape(n, nb) if mname else None
    return words, meta, d, m


def words_to_gguf_blocks(
    words: np.ndarray, meta: np.ndarray, kind: str, n: int, k: int
) -> np.ndarray:
    """Inverse of :func:`gguf_blocks_to_words`: the raw GGUF bytes (uint8, flat)."""
    count = n * (k // GGUF_BLOCK_WEIGHTS[kind])
    lay = gguf_layout(kind)
    code = np.ascontiguousarray(words, dtype=np.uint64).view(np.uint8).reshape(count, -1)
    metab = lay.unpack_field_bytes(meta, count)
    out = np.zeros((count, GGUF_BLOCK_BYTES[kind]), np.uint8)
    co = mo = 0
    for _, o, ln, c in GGUF_SEGMENTS[kind]:
        if c == "code":
            out[:, o : o + ln] = code[:, co : co + ln]
            co += ln
        else:
            out[:, o : o + ln] = metab[:, mo : mo + ln]
            mo += ln
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------
# Element-ordered codes and sub-block parameters (numpy; independent of the Numba decoders)


def _bits_of(b: np.ndarray, shifts, mask: int) -> np.ndarray:
    """``(b[..., None, :] >> shifts) & mask`` stacked on a new axis before the last."""
    sh = np.asarray(shifts, np.uint8).reshape(-1, 1)
    return (b[..., None, :] >> sh) & np.uint8(mask)


def gguf_block_codes(code_bytes: np.ndarray, kind: str) -> np.ndarray:
    """A block's code bytes ``[blocks, >= qs]`` -> unsigned codes ``int16[blocks, weights]`` in
    element order (the kernels' ``q``: ``w = s*(q - z)`` or ``s*q + min`` per compute group;
    Q8_0 signed)."""
    cb = np.asarray(code_bytes, np.uint8)[:, : GGUF_QS_BYTES[kind]]
    nb = cb.shape[0]
    if kind == "q8_0":
        return cb.view(np.int8).astype(np.int16)
    if kind in ("q4_0", "q4_1"):
        return _bits_of(cb, [0, 4], 15).reshape(nb, 32).astype(np.int16)
    if kind in ("q5_0", "q5_1"):
        qh = np.ascontiguousarray(cb[:, :4]).view("<u4").reshape(nb, 1)
        hb = (qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
        lo = _bits_of(cb[:, 4:20], [0, 4], 15).reshape(nb, 32)
        return (lo.astype(np.int16) | (hb.astype(np.int16) << 4)).astype(np.int16)
    if kind in ("q2_k", "tq2_0"):  # TQ2_0's qs is laid out as Q2_K's
        return _bits_of(cb.reshape(nb, 2, 32), [0, 2, 4, 6], 3).reshape(nb, QK_K).astype(np.int16)
    if kind == "tq1_0":  # qs[0:32] digits 0..4, qs[32:48] digits 0..4, qh[48:52] digits 0..3
        parts = [(cb[:, :32], 5), (cb[:, 32:48], 5), (cb[:, 48:52], 4)]
        d = [TQ1_DIGITS[b][:, :, :p].transpose(0, 2, 1).reshape(nb, -1) for b, p in parts]
        return np.concatenate(d, axis=1).astype(np.int16)
    if kind == "q3_k":
        lo = _bits_of(cb[:, 32:96].reshape(nb, 2, 32), [0, 2, 4, 6], 3).reshape(nb, QK_K)
        hb = _bits_of(cb[:, :32], range(8), 1).reshape(nb, QK_K)
        return (lo.astype(np.int16) + 4 * hb.astype(np.int16)).astype(np.int16)
    if kind == "q4_k":
        return _bits_of(cb.reshape(nb, 4, 32), [0, 4], 15).reshape(nb, QK_K).astype(np.int16)
    if kind == "q5_k":
        lo = _bits_of(cb[:, 32:160].reshape(nb, 4, 32), [0, 4], 15).reshape(nb, QK_K)
        hb = _bits_of(cb[:, :32], range(8), 1).reshape(nb, QK_K)
        return (lo.astype(np.int16) | (hb.astype(np.int16) << 4)).astype(np.int16)
    if kind == "q6_k":
        lo = _bits_of(cb[:, :128].reshape(nb, 2, 64), [0, 4], 15).reshape(nb, QK_K)
        hi = _bits_of(cb[:, 128:192].reshape(nb, 2, 32), [0, 2, 4, 6], 3).reshape(nb, QK_K)
        return (lo.astype(np.int16) | (hi.astype(np.int16) << 4)).astype(np.int16)
    raise ValueError(f"not a GGUF block kind: {kind}")


def _k4_scale_min(sc12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 packed bytes -> (8 six-bit scales, 8 six-bit mins)."""
    d, m, md = sc12[:, 0:4], sc12[:, 4:8], sc12[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def gguf_sub_params(meta_bytes: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The cell's metadata decoder: a block's metadata field bytes ``[blocks, meta]`` -> (scale
    fp32 ``[blocks, subs]``, minimum fp32 ``[blocks, subs]``) per compute group, with the fp32
    roundings of llama.cpp / gguf-py (``d*sc`` and ``dmin*m`` one product each; the minimum is
    stored negated so that ``w = scale*q + minimum`` is gguf-py's ``d*sc*q - dmin*m``)."""
    mb = np.asarray(meta_bytes, np.uint8)
    nb = mb.shape[0]
    d = _f16_at(mb, kind, "d").astype(np.float32)[:, None]
    if kind in TERNARY_GGUF_KINDS:  # one d per block, repeated over its compute groups
        subs = QK_K // GGUF_SUB_BLOCK[kind]
        return np.repeat(d, subs, axis=1), np.zeros((nb, subs), np.float32)
    if kind in ("q4_0", "q4_1", "q8_0", "q5_0", "q5_1"):
        if kind in ("q4_1", "q5_1"):
            return d, _f16_at(mb, kind, "m").astype(np.float32)[:, None]
        return d, np.zeros((nb, 1), np.float32)
    so = _meta_offset(kind, "scales")
    if kind == "q2_k":
        sc = mb[:, so : so + 16]
        dmin = _f16_at(mb, kind, "dmin").astype(np.float32)[:, None]
        return d * (sc & 0xF).astype(np.float32), -(dmin * (sc >> 4).astype(np.float32))
    if kind == "q3_k":
        raw = mb[:, so : so + 12]
        lo = _bits_of(raw[:, :8], [0, 4], 15).reshape(nb, 16)
        hi = _bits_of(raw[:, 8:12], [0, 2, 4, 6], 3).reshape(nb, 16)
        s6 = (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)
        return d * s6.astype(np.float32), np.zeros((nb, 16), np.float32)
    if kind in ("q4_k", "q5_k"):
        sc, mn = _k4_scale_min(mb[:, so : so + 12])
        dmin = _f16_at(mb, kind, "dmin").astype(np.float32)[:, None]
        return d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))
    if kind == "q6_k":
        sc = np.ascontiguousarray(mb[:, so : so + 16]).view(np.int8).astype(np.float32)
        return d * sc, np.zeros((nb, 16), np.float32)
    raise ValueError(f"not a GGUF block kind: {kind}")
