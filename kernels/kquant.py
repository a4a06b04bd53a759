"""A simple, correct K-quant quantizer (numpy): fp32 ``[N, K]`` -> llama.cpp block bytes.

gguf-py (the llama.cpp project's Python reference) dequantizes Q2_K ... Q6_K but cannot quantize
them; these produce test tensors and requantized ROM images. Per super-block of 256 weights the
sub-block scales (and mins) are chosen by min/max (not llama.cpp's iterative search: the bytes
are valid blocks, the error is somewhat larger than llama.cpp's), packed exactly as the
``block_q2_K`` ... ``block_q6_K`` structs of ggml-common.h. The tests check the bytes with
gguf-py's dequantizer.
"""

from __future__ import annotations

import numpy as np

from .bitpack import GGUF_BLOCK_BYTES, GGUF_SEGMENTS, KQUANT_KINDS, QK_K

__all__ = ["quantize_kquant"]


def _f16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0).astype(np.float32)


def _min_kind(x: np.ndarray, qmax: int, smax: int):
    """Sub-blocks ``x[nb, subs, G]`` for ``w = d*sc*q - dmin*mn`` (q in [0, qmax], sc and mn
    in [0, smax]): returns (d fp16, dmin fp16, sc, mn, q) as small unsigned ints."""
    lo = np.minimum(x.min(axis=2), 0)
    hi = np.maximum(x.max(axis=2), lo)
    scale = (hi - lo) / qmax
    d = _f16(scale.max(axis=1) / smax)
    dmin = _f16((-lo).max(axis=1) / smax)
    d32, m32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.uint8)
    mn = np.clip(np.rint(_safe_div(-lo, m32)), 0, smax).astype(np.uint8)
    es = (d32 * sc.astype(np.float32))[:, :, None]
    em = (m32 * mn.astype(np.float32))[:, :, None]
    q = np.clip(np.rint(_safe_div(x + em, es)), 0, qmax).astype(np.uint8)
    return d, dmin, sc, mn, q


def _sym_kind(x: np.ndarray, qlo: int, qhi: int, smax: int):
    """Sub-blocks for ``w = d*sc*q`` (q in [qlo, qhi], sc in [0, smax]): (d fp16, sc, q - qlo)."""
    scale = np.abs(x).max(axis=2) / qhi
    d = _f16(scale.max(axis=1) / smax)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.int32)
    es = (d32 * sc.astype(np.float32))[:, :, None]
    q = np.clip(np.rint(_safe_div(x, es)), qlo, qhi).astype(np.int32) - qlo
    return d, sc, q.astype(np.uint8)


def _pack_bits(q: np.ndarray, shape: tuple[int, ...], shifts, mask: int) -> np.ndarray:
    """Inverse of gguf-py's ``(bytes.reshape(shape)[..., None, :] >> shifts) & mask``: codes
    ``q[nb, 256]`` -> bytes ``[nb, prod(shape)]``."""
    nb = q.shape[0]
    sh = list(shifts)
    v = q.reshape(nb, *shape[:-1], len(sh), shape[-1]).astype(np.uint8) & np.uint8(mask)
    out = np.zeros((nb, *shape), np.uint8)
    for i, s in enumerate(sh):
        out |= v[..., i, :] << np.uint8(s)
    return out.reshape(nb, -1)


def _k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 8 six-bit scales and mins -> the 12 packed bytes (get_scale_min_k4)."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return out


def _assemble(kind: str, parts: dict[str, np.ndarray]) -> np.ndarray:
    nb = next(iter(parts.values())).shape[0]
    out = np.zeros((nb, GGUF_BLOCK_BYTES[kind]), np.uint8)
    for name, o, ln, _ in GGUF_SEGMENTS[kind]:
        p = parts[name]
        if p.dtype == np.float16:
            p = p.reshape(nb, 1).view(np.uint8)
        out[:, o : o + ln] = p.reshape(nb, ln)
    return out.reshape(-1)


def quantize_kquant(w: np.ndarray, kind: str) -> np.ndarray:
    """``w[N, K]`` (K a multiple of 256) -> raw llama.cpp ``kind`` blocks (uint8, flat, row-major
    blocks), ``kind`` one of q2_k, q3_k, q4_k, q5_k, q6_k."""
    if kind not in KQUANT_KINDS:
        raise ValueError(f"not a K-quant kind: {kind} (one of {', '.join(KQUANT_KINDS)})")
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.shape[1] % QK_K:
        raise ValueError(f"{kind} needs a 2-D weight with K % {QK_K} == 0 (got {w.shape})")
    blocks = w.reshape(-1, QK_K)
    nb = blocks.shape[0]
    if kind == "q2_k":
        d, dmin, sc, mn, q = _min_kind(blocks.reshape(nb, 16, 16), 3, 15)
        return _assemble(
            kind,
            {
                "scales": sc | (mn << np.uint8(4)),
                "qs": _pack_bits(q, (2, 32), [0, 2, 4, 6], 3),
                "d": d,
                "dmin": dmin,
            },
        )
    if kind in ("q4_k", "q5_k"):
        qmax = 15 if kind == "q4_k" else 31
        d, dmin, sc, mn, q = _min_kind(blocks.reshape(nb, 8, 32), qmax, 63)
        parts = {"d": d, "dmin": dmin, "scales": _k4_scales(sc, mn)}
        parts["qs"] = _pack_bits(q, (4, 32), [0, 4], 15)
        if kind == "q5_k":
            parts["qh"] = _pack_bits(q >> 4, (32,), range(8), 1)
        return _assemble(kind, parts)
    if kind == "q3_k":
        d, sc, u = _sym_kind(blocks.reshape(nb, 16, 16), -4, 3, 31)
        s6 = (sc + 32).astype(np.uint8)  # stored scale - 32 is the signed 6-bit scale
        scales = np.zeros((nb, 12), np.uint8)
        scales[:, :8] = (s6[:, :8] & 15) | ((s6[:, 8:] & 15) << 4)
        hi = s6 >> 4
        scales[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
        return _assemble(
            kind,
            {
                "hmask": _pack_bits(u >> 2, (32,), range(8), 1),
                "qs": _pack_bits(u & 3, (2, 32), [0, 2, 4, 6], 3),
                "scales": scales,
                "d": d,
            },
        )
    # q6_k
    d, sc, u = _sym_kind(blocks.reshape(nb, 16, 16), -32, 31, 127)
    return _assemble(
        kind,
        {
            "ql": _pack_bits(u & 15, (2, 64), [0, 4], 15),
            "qh": _pack_bits(u >> 4, (2, 32), [0, 2, 4, 6], 3),
            "scales": sc.astype(np.int8).view(np.uint8),
            "d": d,
        },
    )
