"""GGUF blocks and the affine quantizer on top of the ROM word layout (numpy, no numba, no torch).

The ROM word layout itself -- codes as word-aligned little-endian bit streams, metadata fields
packed several to a word -- is defined once in :mod:`romsim.rom.layout` (:class:`RomLayout`);
the kernels use it at :data:`~romsim.rom.layout.KERNEL_WORD_BITS` (64-bit words, ``numpy.uint64``
in host order, read through a ``uint8`` view: the little-endian byte stream, the layout module
checks the host at import). This module adds:

* GGUF blocks (Q4_0, Q4_1, Q8_0: 32 weights per block) <-> ROM words, bit-exact with llama.cpp
  (the layout's rule 7): a block's ``qs`` bytes are the group's code stream in llama.cpp's element
  order, its ``d`` (and Q4_1's ``m``) the group's metadata field.
* :func:`quantize_affine` / :func:`dequantize_affine`: the re-quantizer for 2/3/4/8-bit images.
"""

from __future__ import annotations

import numpy as np

from romsim.rom.layout import KERNEL_WORD_BITS, RomLayout, n_groups

AFFINE_BITS = (2, 3, 4, 8)
GGUF_KINDS = ("q4_0", "q4_1", "q8_0")
GGUF_BLOCK = 32
GGUF_QS_BYTES = {"q4_0": 16, "q4_1": 16, "q8_0": 32}
GGUF_BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q8_0": 34}
GGUF_BITS = {"q4_0": 4, "q4_1": 4, "q8_0": 8}
GGUF_ZERO_BITS = {"q4_0": 0, "q4_1": 16, "q8_0": 0}

__all__ = [
    "AFFINE_BITS",
    "GGUF_BLOCK",
    "GGUF_BLOCK_BYTES",
    "GGUF_KINDS",
    "GGUF_QS_BYTES",
    "dequantize_affine",
    "gguf_blocks_to_words",
    "gguf_layout",
    "n_groups",
    "quantize_affine",
    "words_to_gguf_blocks",
]


def gguf_layout(kind: str) -> RomLayout:
    """The :class:`RomLayout` of a GGUF block kind in the kernels' 64-bit words."""
    return RomLayout(GGUF_BITS[kind], GGUF_BLOCK, GGUF_ZERO_BITS[kind], 16, KERNEL_WORD_BITS)


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
        meta = gguf_layout(kind).pack_meta(d, m.view(np.uint16))
    else:
        m = None
        qs = blocks[:, 2:]
        meta = gguf_layout(kind).pack_meta(d, None)
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
    lay = gguf_layout(kind)
    if kind == "q4_1":
        d, mbits = lay.unpack_meta(meta, count)
        head = np.stack([d.view(np.uint16), mbits.astype(np.uint16)], axis=1)
    else:
        d, _ = lay.unpack_meta(meta, count)
        head = d.view(np.uint16)[:, None]
    head_b = np.ascontiguousarray(head.astype("<u2")).view(np.uint8).reshape(count, -1)
    return np.concatenate([head_b, qs], axis=1).reshape(-1)
