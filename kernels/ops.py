"""Float (fp32) vector-unit kernels of the decoder (Numba, no torch): RMSNorm, RoPE, SiLU-gated
FFN glue, grouped-query attention over a KV cache, softmax, the LoRA path and sampling.

These run on the accelerator's H-Unit / vector units in fp32 in this model; they are references,
not bit-exact hardware specifications (only the L-Unit integer dot is, see qmatmul.py).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .qmatmul import set_threads_for


@nb.njit(fastmath=True, cache=True)
def rmsnorm(x, w, eps):
    """``y = x / sqrt(mean(x**2) + eps) * w`` per row of ``x[M, D]`` (fp32; sum in fp64)."""
    M, D = x.shape
    out = np.empty((M, D), np.float32)
    for m in range(M):
        ss = 0.0
        for i in range(D):
            v = np.float64(x[m, i])
            ss += v * v
        r = np.float32(1.0 / math.sqrt(ss / D + eps))
        for i in range(D):
            out[m, i] = x[m, i] * r * w[i]
    return out


def rope_tables(head_dim: int, max_pos: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin ``[max_pos, head_dim/2]`` fp32 for ``angle = pos * theta**(-2i/head_dim)``
    (computed in fp64, rounded once)."""
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(max_pos, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@nb.njit(fastmath=True, cache=True)
def rope_interleaved(x, pos, cos, sin):
    """In-place RoPE on ``x[M, H, hd]`` rotating adjacent pairs ``(2i, 2i+1)`` (llama.cpp
    "normal" mode, which matches GGUF's permuted Q/K rows); ``pos[M]`` absolute positions."""
    M, H, hd = x.shape
    for m in range(M):
        p = pos[m]
        for h in range(H):
            for i in range(hd // 2):
                c = cos[p, i]
                s = sin[p, i]
                a = x[m, h, 2 * i]
                b = x[m, h, 2 * i + 1]
                x[m, h, 2 * i] = a * c - b * s
                x[m, h, 2 * i + 1] = a * s + b * c


@nb.njit(fastmath=True, cache=True)
def silu_mul(gate, up):
    """SwiGLU glue: ``silu(gate) * up`` elementwise, ``silu(g) = g / (1 + exp(-g))``."""
    M, F = gate.shape
    out = np.empty((M, F), np.float32)
    for m in range(M):
        for i in range(F):
            g = gate[m, i]
            out[m, i] = g / (np.float32(1.0) + np.exp(-g)) * up[m, i]
    return out


@nb.njit(fastmath=True, cache=True)
def softmax_inplace(v, n):
    """Softmax over ``v[:n]`` in place (max-subtracted, fp32)."""
    mx = v[0]
    for i in range(1, n):
        if v[i] > mx:
            mx = v[i]
    t = np.float32(0.0)
    for i in range(n):
        e = np.exp(v[i] - mx)
        v[i] = e
        t += e
    inv = np.float32(1.0) / t
    for i in range(n):
        v[i] *= inv


@nb.njit(cache=True)
def softmax(x):
    """Row softmax of ``x[M, N]`` (fp32)."""
    out = x.astype(np.float32).copy()
    for m in range(out.shape[0]):
        softmax_inplace(out[m], out.shape[1])
    return out


def gqa_attention(q, kc, vc, pos0):
    """Causal grouped-query attention for ``M`` new queries over a KV cache.

    ``q[M, Hq, hd]``; ``kc, vc[Hkv, T, hd]`` already hold the keys/values of positions
    ``0 .. pos0+M-1``; query m (absolute position ``pos0+m``) attends to keys ``0 .. pos0+m``.
    Query head h reads KV head ``h // (Hq // Hkv)``. Scale ``1/sqrt(hd)``. Returns ``[M, Hq, hd]``.
    """
    m, hq, hd = q.shape
    set_threads_for(2 * m * hq * (pos0 + m) * hd)
    return _gqa_attention(q, kc, vc, pos0)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _gqa_attention(q, kc, vc, pos0):
    """Core of :func:`gqa_attention` (parallel over query heads)."""
    M, Hq, hd = q.shape
    Hkv = kc.shape[0]
    rep = Hq // Hkv
    scale = np.float32(1.0 / math.sqrt(hd))
    out = np.zeros((M, Hq, hd), np.float32)
    for idx in nb.prange(M * Hq):
        m = idx // Hq
        h = idx % Hq
        kvh = h // rep
        n = pos0 + m + 1
        sc = np.empty(n, np.float32)
        for t in range(n):
            acc = np.float32(0.0)
            for i in range(hd):
                acc += q[m, h, i] * kc[kvh, t, i]
            sc[t] = acc * scale
        softmax_inplace(sc, n)
        for t in range(n):
            p = sc[t]
            for i in range(hd):
                out[m, h, i] += p * vc[kvh, t, i]
    return out


@nb.njit(parallel=True, fastmath=True, cache=True)
def _dense_nt(x, w):
    """``x[M, K] @ w[N, K].T`` in fp32 (SRAM-resident small matrices)."""
    M, K = x.shape
    N = w.shape[0]
    out = np.empty((M, N), np.float32)
    for n in nb.prange(N):
        for m in range(M):
            acc = np.float32(0.0)
            for i in range(K):
                acc += x[m, i] * w[n, i]
            out[m, n] = acc
    return out


def dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    x2 = np.ascontiguousarray(np.atleast_2d(x), np.float32)
    set_threads_for(x2.shape[0] * w.shape[0] * w.shape[1])
    return _dense_nt(x2, np.ascontiguousarray(w, np.float32))


def lora_delta(x: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, rank: int) -> np.ndarray:
    """LoRA path on the SRAM side: ``(x @ A.T) @ B.T * (alpha / r)``; ``A[r, K]``, ``B[N, r]``."""
    t = dense(x, a)
    return dense(t, b) * np.float32(alpha / rank)


@nb.njit(cache=True)
def argmax(v):
    """Index of the first maximum (ties: lowest index, as torch/numpy)."""
    best = 0
    bv = v[0]
    for i in range(1, v.shape[0]):
        if v[i] > bv:
            bv = v[i]
            best = i
    return best


@nb.njit(cache=True)
def top_k(v, k):
    """Indices of the k largest values, descending (ties: lower index first)."""
    idx = np.argsort(-v.astype(np.float64), kind="mergesort")
    return idx[:k]


def sample_top_k(logits: np.ndarray, k: int, temperature: float, u: float) -> int:
    """Sample from the top-k of ``logits / temperature`` with one uniform ``u`` in [0, 1):
    inverse CDF over the renormalized top-k probabilities (descending order). ``k <= 1`` or
    ``temperature <= 0`` is greedy (:func:`argmax`)."""
    logits = np.asarray(logits, np.float32)
    if k <= 1 or temperature <= 0:
        return int(argmax(logits))
    idx = top_k(logits, min(k, logits.shape[0]))
    z = logits[idx].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    c = np.cumsum(p / p.sum())
    j = int(np.searchsorted(c, u, side="right"))
    return int(idx[min(j, idx.size - 1)])
