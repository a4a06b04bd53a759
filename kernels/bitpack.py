"""ROM word packing of quantized weights (numpy, no numba, no torch).

One definition of the bit layout, shared with ``romsim.quant`` (see its module docstring):

* Codes. A weight matrix ``W[N, K]`` (row = output) is cut into groups of ``group_size``
  consecutive K elements of one row; a row whose K is not a multiple of ``group_size`` ends in a
  short group padded with code 0 (the kernels pad the activation with zeros, so the padding never
  contributes). Each group is a little-endian bit stream of ``bits``-wide unsigned codes, code i
  at bit offset ``i*bits`` (LSB first), packed into 64-bit words; every group starts on a word
  boundary, so it takes ``words_per_group = ceil(group_size*bits/64)`` words (3-bit codes straddle
  word boundaries). Groups are stored row-major: row n, then group g.
* Metadata. Per group a ``meta_bits = 16 + zero_bits`` field: the FP16 scale's bit pattern in
  bits ``[0, 16)`` of the field, then the zero point (unsigned, ``zero_bits`` wide) in the next
  ``zero_bits`` bits. ``floor(64 / meta_bits)`` fields share one 64-bit word, LSB first; fields
  follow the groups' row-major order across the whole matrix (a row does not restart a word).
* GGUF blocks (Q4_0, Q4_1, Q8_0: 32 weights per block) keep llama.cpp's bytes bit-exact: the
  block's ``qs`` bytes (16 for Q4_x, 32 for Q8_0) form the code stream of the group, in
  llama.cpp's order (Q4_x: byte j holds element j in its low nibble and element j+16 in its high
  nibble; Q8_0: byte j is element j as int8), i.e. 2 or 4 words per block; the metadata field is
  ``d`` (fp16) for Q4_0/Q8_0 (4 fields per word) and ``d`` then ``m`` (fp16 each, 32 bits, 2 per
  word) for Q4_1. Concatenating a block's metadata bytes and qs bytes gives the GGUF block back.

Words are ``numpy.uint64`` in host order; the kernels read them through a ``uint8`` view, which is
the little-endian byte stream only on a little-endian host (checked at import).
"""

from __future__ import annotations

import math
import sys

import numpy as np

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("romsim.kernels assumes a little-endian host")

WORD_BITS = 64
AFFINE_BITS = (2, 3, 4, 8)
GGUF_KINDS = ("q4_0", "q4_1", "q8_0")
GGUF_BLOCK = 32
GGUF_QS_BYTES = {"q4_0": 16, "q4_1": 16, "q8_0": 32}
GGUF_BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}


def words_per_group(group_size: int, bits: int) -> int:
    return math.ceil(group_size * bits / WORD_BITS)


def n_groups(k: int, group_size: int) -> int:
    return math.ceil(k / group_size)


def pack_codes(codes: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Pack unsigned codes ``[N, K]`` into ROM words ``uint64[N * ng * words_per_group]``."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {codes.shape}")
    if bits not in AFFINE_BITS:
        raise ValueError(f"bits must be one of {AFFINE_BITS}, got {bits}")
    n, k = codes.shape
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits} bits")
    ng = n_groups(k, group_size)
    wpg = words_per_group(group_size, bits)
    padded = np.zeros((n, ng * group_size), dtype=np.uint8)
    padded[:, :k] = codes
    grouped = padded.reshape(n * ng, group_size)
    if WORD_BITS % bits == 0:  # 2, 4, 8 bits: no straddling, shift-or whole words
        cpw = WORD_BITS // bits
        lanes = np.zeros((n * ng, wpg * cpw), dtype=np.uint64)
        lanes[:, :group_size] = grouped
        lanes = lanes.reshape(n * ng, wpg, cpw) << (
            np.arange(cpw, dtype=np.uint64) * np.uint64(bits)
        )
        return np.bitwise_or.reduce(lanes, axis=2).reshape(-1).astype(np.uint64)
    bitplanes = (grouped[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    stream = bitplanes.reshape(n * ng, group_size * bits)
    full = np.zeros((n * ng, wpg * WORD_BITS), dtype=np.uint8)
    full[:, : group_size * bits] = stream
    packed = np.packbits(full, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").reshape(-1).astype(np.uint64, copy=False)


def unpack_codes(words: np.ndarray, bits: int, group_size: int, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint8[N, K]``."""
    ng = n_groups(k, group_size)
    wpg = words_per_group(group_size, bits)
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.size != n * ng * wpg:
        raise ValueError(
            f"expected {n * ng * wpg} words for [{n}, {k}] w{bits}g{group_size}, got {words.size}"
        )
    by = words.astype("<u8").view(np.uint8).reshape(n * ng, wpg * 8)
    bitstream = np.unpackbits(by, axis=1, bitorder="little")[:, : group_size * bits]
    planes = bitstream.reshape(n * ng, group_size, bits).astype(np.uint8)
    codes = (
        (planes << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint16).astype(np.uint8)
    )
    return codes.reshape(n, ng * group_size)[:, :k]


def pack_meta(scale_fp16: np.ndarray, zero: np.ndarray | None, zero_bits: int) -> np.ndarray:
    """Pack per-group metadata (row-major over groups) into 64-bit words.

    ``scale_fp16``: float16 array (any shape, flattened row-major). ``zero``: unsigned ints of
    ``zero_bits`` bits (same shape), or None when ``zero_bits == 0``. For Q4_1 pass the fp16
    minimum's bit pattern (``m.view(uint16)``) as ``zero`` with ``zero_bits=16``.
    """
    s_bits = np.ascontiguousarray(scale_fp16, dtype=np.float16).reshape(-1).view(np.uint16)
    fields = s_bits.astype(np.uint64)
    if zero_bits:
        z = np.asarray(zero).reshape(-1).astype(np.uint64)
        if z.size != fields.size:
            raise ValueError("scale and zero sizes differ")
        if z.size and int(z.max()) >= (1 << zero_bits):
            raise ValueError(f"zero out of range for {zero_bits} bits")
        fields |= z << np.uint64(16)
    meta_bits = 16 + zero_bits
    per_word = WORD_BITS // meta_bits
    nwords = math.ceil(fields.size / per_word)
    padded = np.zeros(nwords * per_word, dtype=np.uint64)
    padded[: fields.size] = fields
    padded = padded.reshape(nwords, per_word)
    shifts = (np.arange(per_word, dtype=np.uint64) * np.uint64(meta_bits))[None, :]
    return np.bitwise_or.reduce(padded << shifts, axis=1).astype(np.uint64)


def unpack_meta(words: np.ndarray, count: int, zero_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_meta`: (float16 scales, uint zero fields as uint32), flat."""
    meta_bits = 16 + zero_bits
    per_word = WORD_BITS // meta_bits
    words = np.asarray(words, dtype=np.uint64)
    if words.size != math.ceil(count / per_word):
        raise ValueError(f"expected {math.ceil(count / per_word)} metadata words, got {words.size}")
    shifts = (np.arange(per_word, dtype=np.uint64) * np.uint64(meta_bits))[None, :]
    mask = np.uint64((1 << meta_bits) - 1)
    fields = ((words[:, None] >> shifts) & mask).reshape(-1)[:count]
    scale = (fields & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16)
    zero = (fields >> np.uint64(16)).astype(np.uint32) if zero_bits else np.zeros(count, np.uint32)
    return scale, zero


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


def gguf_blocks_to_words(
    raw: np.ndarray, kind: str, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Split raw GGUF bytes of a ``[N, K]`` tensor into (code words, meta words, d fp16, m fp16).

    The code words hold the blocks' qs bytes unchanged; the meta words hold d (and m for Q4_1)
    unchanged; :func:`words_to_gguf_blocks` rebuilds the identical bytes.
    """
    if kind not in GGUF_KINDS:
        raise ValueError(f"not a GGUF block kind: {kind}")
    if k % GGUF_BLOCK:
        raise ValueError(f"GGUF {kind} needs K % 32 == 0 (K={k})")
    bb = GGUF_BLOCK_BYTES[kind]
    nb = k // GGUF_BLOCK
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != n * nb * bb:
        raise ValueError(f"expected {n * nb * bb} bytes for {kind} [{n}, {k}], got {raw.size}")
    blocks = raw.reshape(n * nb, bb)
    d = np.ascontiguousarray(blocks[:, 0:2]).view(np.float16).reshape(n, nb)
    if kind == "q4_1":
        m = np.ascontiguousarray(blocks[:, 2:4]).view(np.float16).reshape(n, nb)
        qs = blocks[:, 4:]
        meta = pack_meta(d, m.view(np.uint16), 16)
    else:
        m = None
        qs = blocks[:, 2:]
        meta = pack_meta(d, None, 0)
    words = np.ascontiguousarray(qs).view("<u8").reshape(-1).astype(np.uint64, copy=False)
    return words, meta, d, m


def words_to_gguf_blocks(
    words: np.ndarray, meta: np.ndarray, kind: str, n: int, k: int
) -> np.ndarray:
    """Inverse of :func:`gguf_blocks_to_words`: the raw GGUF bytes (uint8, flat)."""
    nb = k // GGUF_BLOCK
    count = n * nb
    qsb = GGUF_QS_BYTES[kind]
    qs = np.ascontiguousarray(words, dtype=np.uint64).view(np.uint8).reshape(count, qsb)
    if kind == "q4_1":
        d, mbits = unpack_meta(meta, count, 16)
        head = np.stack([d.view(np.uint16), mbits.astype(np.uint16)], axis=1)
    else:
        d, _ = unpack_meta(meta, count, 0)
        head = d.view(np.uint16)[:, None]
    head_b = np.ascontiguousarray(head.astype("<u2")).view(np.uint8).reshape(count, -1)
    return np.concatenate([head_b, qs], axis=1).reshape(-1)
