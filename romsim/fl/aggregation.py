"""Server-side aggregation of LoRA adapters. Pure numpy.

A global adapter is a dict ``key -> array`` with keys ``"{layer}.{kind}.A"`` / ``"{layer}.{kind}.B"``
(LoRA A is r x K, B is N x r). A client update is the subset of keys it trained (its
assignment) with its number of training examples as weight.

- :func:`layerwise_fedavg`: every key is the example-weighted mean over exactly the clients that
  returned it; keys nobody trained keep their previous value. With one shared assignment this
  is plain FedAvg over LoRA (A and B averaged separately, as FedIT does).
- :func:`stagg`: Fed-piLot's spatial-temporal aggregation with dynamic weight adjustment, as we
  read it (the paper's equations were not available to us; see docs/federated.md): the
  *spatial* part is the layer-wise mean update of this round; the *temporal* part is the key's
  previous global update (momentum-like memory). A key's update is
  ``(1 - w) * spatial + w * previous`` with ``w = mu * (1 - coverage)``, coverage = share of this
  round's training examples whose clients trained the key; keys nobody trained this round
  move by ``rho * previous``. Under-covered layers are thus compensated by their history.
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


def layerwise_fedavg(
    global_arrays: dict[str, np.ndarray], updates: list[ClientUpdate]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """New global adapter and, per key, how many clients contributed."""
    out = {k: v.copy() for k, v in global_arrays.items()}
    counts = {k: 0 for k in global_arrays}
    acc: dict[str, np.ndarray] = {}
    wsum: dict[str, float] = {}
    for u in updates:
        for k, a in u.arrays.items():
            acc[k] = acc.get(k, 0.0) + u.weight * a.astype(np.float64)
            wsum[k] = wsum.get(k, 0.0) + u.weight
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
) -> tuple[dict[str, np.ndarray], dict[str, int], STAggState]:
    """``spatial_counts``: a robust spatial aggregate (romsim.fl.defenses) to use instead of
    the layer-wise mean; ``updates`` are then the ones the defense kept (for the coverage)."""
    if spatial_counts is None:
        spatial, counts = layerwise_fedavg(global_arrays, updates)
    else:
        spatial, counts = spatial_counts
    total_w = sum(u.weight for u in updates) or 1.0
    cover: dict[str, float] = {}
    for u in updates:
        for k in u.arrays:
            cover[k] = cover.get(k, 0.0) + u.weight / total_w
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


def update_norms(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, float]:
    """Frobenius norm of the change of every key (Fed-piLot's global information term)."""
    return {k: float(np.linalg.norm(new[k].astype(np.float64) - old[k])) for k in old}
