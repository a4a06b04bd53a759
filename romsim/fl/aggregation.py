"""Server-side aggregation of LoRA adapters. Pure numpy.

A global adapter is a dict ``key -> array`` with keys ``"{layer}.{kind}.A"`` / ``"{layer}.{kind}.B"``
(LoRA A is r x K, B is N x r). A client update is the subset of keys it trained (its
assignment) with its number of training examples as weight.

- :func:`layerwise_fedavg`: every key is the mean over exactly the clients that returned it;
  keys nobody trained keep their previous value. ``weights = "uniform"`` (the default) is the
  official Fed-HeLLo aggregation (``average_lora_depthfl``: an unweighted per-key mean);
  ``"examples"`` weights each client by its number of training examples (FedAvg's weights;
  romsim's earlier default). With one shared assignment this is plain FedAvg over LoRA
  (A and B averaged separately, as FedIT does).
- :func:`hetlora_aggregate`: HetLoRA's sparsity-weighted aggregation of zero-padded
  rank-truncated updates.
- :func:`stagg`: Fed-piLot's spatial-temporal aggregation with dynamic weight adjustment, as we
  read it (the paper's equations were not available to us; see docs/federated.md): the
  *spatial* part is the layer-wise mean update of this round; the *temporal* part is the key's
  previous global update (momentum-like memory). A key's update is
  ``(1 - w) * spatial + w * previous`` with ``w = mu * (1 - coverage)``, coverage = share of this
  round's clients (``weights = "examples"``: of its training examples) that trained the key;
  keys nobody trained this round move by ``rho * previous``. Under-covered layers are thus
  compensated by their history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientUpdate:
    cid: int
    weight: float  # number of training examples
    arrays: dict[str, np.ndarray]


def validate_update(
    update: ClientUpdate, reference: dict[str, np.ndarray], expected_keys: set[str] | None = None
) -> str | None:
    """Why an update must be dropped (None: it is fine): unknown keys, wrong shapes or dtypes,
    NaN/inf, keys it was not assigned, a non-positive weight."""
    if not np.isfinite(update.weight) or update.weight <= 0:
        return f"non-positive or non-finite example count {update.weight!r}"
    if not update.arrays:
        return "no arrays returned"
    for k, a in update.arrays.items():
        if k not in reference:
            return f"unknown tensor {k!r}"
        if expected_keys is not None and k not in expected_keys:
            return f"tensor {k!r} was not assigned to this client"
        if a.shape != reference[k].shape:
            return f"tensor {k!r} has shape {a.shape}, expected {reference[k].shape}"
        if not np.issubdtype(a.dtype, np.floating):
            return f"tensor {k!r} has dtype {a.dtype}"
        if not np.all(np.isfinite(a)):
            return f"tensor {k!r} holds NaN or inf"
    if expected_keys is not None and set(update.arrays) != expected_keys:
        missing = sorted(expected_keys - set(update.arrays))[:3]
        return f"missing assigned tensors {missing}"
    return None


WEIGHTINGS = ("uniform", "examples")


def client_weight(u: ClientUpdate, weights: str = "uniform") -> float:
    """A client's aggregation weight: 1 (``uniform``) or its training examples."""
    if weights == "uniform":
        return 1.0
    if weights == "examples":
        return float(u.weight)
    raise ValueError(f"unknown aggregation weights {weights!r}; one of {', '.join(WEIGHTINGS)}")


def layerwise_fedavg(
    global_arrays: dict[str, np.ndarray],
    updates: list[ClientUpdate],
    weights: str = "uniform",
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """New global adapter and, per key, how many clients contributed. ``weights``:
    ``uniform`` (official Fed-HeLLo) or ``examples``."""
    out = {k: v.copy() for k, v in global_arrays.items()}
    counts = {k: 0 for k in global_arrays}
    acc: dict[str, np.ndarray] = {}
    wsum: dict[str, float] = {}
    for u in updates:
        w = client_weight(u, weights)
        for k, a in u.arrays.items():
            acc[k] = acc.get(k, 0.0) + w * a.astype(np.float64)
            wsum[k] = wsum.get(k, 0.0) + w
            counts[k] += 1
    for k, s in acc.items():
        out[k] = (s / wsum[k]).astype(global_arrays[k].dtype)
    return out, counts


@dataclass
class STAggState:
    """Per-key previous global update (the temporal memory)."""

    prev_update: dict[str, np.ndarray] = field(default_factory=dict)


def stagg(
    global_arrays: dict[str, np.ndarray],
    updates: list[ClientUpdate],
    state: STAggState,
    mu: float = 0.5,
    rho: float = 0.5,
    spatial_counts: tuple[dict[str, np.ndarray], dict[str, int]] | None = None,
    weights: str = "uniform",
) -> tuple[dict[str, np.ndarray], dict[str, int], STAggState]:
    """``spatial_counts``: a robust spatial aggregate (romsim.fl.defenses) to use instead of
    the layer-wise mean; ``updates`` are then the ones the defense kept (for the coverage).
    ``weights`` weighs the spatial mean and the coverage (see :func:`layerwise_fedavg`)."""
    if spatial_counts is None:
        spatial, counts = layerwise_fedavg(global_arrays, updates, weights)
    else:
        spatial, counts = spatial_counts
    total_w = sum(client_weight(u, weights) for u in updates) or 1.0
    cover: dict[str, float] = {}
    for u in updates:
        for k in u.arrays:
            cover[k] = cover.get(k, 0.0) + client_weight(u, weights) / total_w
    out: dict[str, np.ndarray] = {}
    new_prev: dict[str, np.ndarray] = {}
    for k, g in global_arrays.items():
        g64 = g.astype(np.float64)
        prev = state.prev_update.get(k)
        if counts[k] > 0:
            delta = spatial[k].astype(np.float64) - g64
            if prev is not None:
                w = mu * (1.0 - min(1.0, cover[k]))
                delta = (1 - w) * delta + w * prev
        elif prev is not None:
            delta = rho * prev
        else:
            delta = np.zeros_like(g64)
        out[k] = (g64 + delta).astype(g.dtype)
        new_prev[k] = delta
    return out, counts, STAggState(new_prev)


# ------------------------------------------------------------------------------ HetLoRA
def truncate_rank(arrays: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """HetLoRA's truncation of the global adapter for a client of rank ``rank``: rows
    ``>= rank`` of every A and columns ``>= rank`` of every B set to zero. A zeroed rank
    component adds nothing to the forward pass and gets a zero gradient (A's rows need B's
    columns and vice versa), so AdamW leaves it exactly zero: the client trains a rank-``rank``
    LoRA on the full-size arrays, and its reply is the zero-padded update."""
    out = {}
    for k, a in arrays.items():
        a = a.copy()
        if k.endswith(".A"):
            a[rank:, :] = 0
        elif k.endswith(".B"):
            a[:, rank:] = 0
        out[k] = a
    return out


def lora_norm(arrays: dict[str, np.ndarray]) -> float:
    """Frobenius norm of a client's whole low-rank update, sqrt(sum_m ||B_m A_m||_F^2) over its
    modules (||BA||_F^2 = trace(B^T B A A^T), no N x K product)."""
    tot = 0.0
    for k, a in arrays.items():
        if not k.endswith(".A"):
            continue
        b = arrays.get(k[:-1] + "B")
        if b is None:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        tot += float(np.trace((b64.T @ b64) @ (a64 @ a64.T)))
    return float(np.sqrt(max(tot, 0.0)))


def hetlora_aggregate(
    global_arrays: dict[str, np.ndarray],
    updates: list[ClientUpdate],
    ranks: dict[int, int],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """HetLoRA (arXiv 2401.06432) sparsity-weighted aggregation with zero padding: client k
    (rank ``ranks[cid]``) gets weight ``s_k / sum s``, ``s_k`` = :func:`lora_norm` of the LoRA
    it returned; every key moves by ``sum_k w_k * pad(delta_k)``, where ``delta_k`` is the
    client's change of the rank components it held and ``pad`` fills the others with zeros
    (so higher rank components, held by fewer clients, move by a smaller total weight). This
    is the delta form of the Fed-HeLLo repository's (unused) HetLoRA aggregator; the HetLoRA
    paper averages the padded modules themselves, which also shrinks the untouched
    components. All norms 0 (nothing learnt yet): uniform weights."""
    out = {k: v.copy() for k, v in global_arrays.items()}
    counts = {k: 0 for k in global_arrays}
    if not updates:
        return out, counts
    s = np.array([lora_norm(u.arrays) for u in updates])
    w = s / s.sum() if s.sum() > 0 else np.full(len(updates), 1 / len(updates))
    acc: dict[str, np.ndarray] = {}
    for u, wk in zip(updates, w, strict=True):
        r = ranks[u.cid]
        for k, a in u.arrays.items():
            g = global_arrays[k].astype(np.float64)
            d = a.astype(np.float64) - g
            if k.endswith(".A"):
                d[r:, :] = 0
            elif k.endswith(".B"):
                d[:, r:] = 0
            acc[k] = acc.get(k, 0.0) + wk * d
            counts[k] += 1
    for k, d in acc.items():
        out[k] = (global_arrays[k].astype(np.float64) + d).astype(global_arrays[k].dtype)
    return out, counts


def update_norms(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, float]:
    """Frobenius norm of the change of every key (Fed-piLot's global information term)."""
    return {k: float(np.linalg.norm(new[k].astype(np.float64) - old[k])) for k in old}
