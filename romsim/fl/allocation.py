"""Which LoRA modules each client trains in a round. Pure functions (numpy only).

Conventions: layers are numbered 0 (next to the embeddings, "bottom") to n-1 (next to the LM
head, "top"). A client's budget ``k`` (layers it can train) comes from the device's SRAM
(:attr:`romsim.fl.devices.Device.max_layers`).

Fed-HeLLo (arXiv 2506.12213) heterogeneous LoRA allocation (HLA):

- **GD-HLA** shapes the *collective* distribution of trained layers: the number of clients
  that train layer ``l`` follows a pattern over depth. We read the shapes as drawn with layer 0
  at the bottom and the width of the figure at height ``l`` = how many clients train layer l:

  ========== ================================= =====================================
  pattern    weight of layer l (0..n-1)        meaning
  ========== ================================= =====================================
  uniform    1                                 every layer trained equally often
  triangle   n - l                             bottom layers most, top layers least
  inverted   l + 1                             top layers most, bottom layers least
  bottleneck |l - (n-1)/2| + 1                 both ends most, the middle least
  ========== ================================= =====================================

  The total number of (client, layer) slots ``K = sum_i k_i`` is apportioned over the layers in
  proportion to the weights (largest remainder, each layer at most N clients), then clients,
  largest budget first, take their ``k_i`` distinct layers with the largest remaining quota.
  Deterministic: the same budgets give the same allocation every round.
- **RGD-HLA** draws each client's ``k_i`` distinct layers at random, without replacement, with
  probability proportional to the pattern's weights (a new draw every round, seeded).
- **FIM-HLA** ranks layers by a Fisher-information score (the squared norm of the LoRA
  gradients on a probe batch; per client, or averaged over clients) and gives each client its
  ``k_i`` top-scoring layers.

Fed-piLot (arXiv 2410.10200): each client's assignment is a 0/1 knapsack over
(layer, group) items (groups ``attn``, ``mlp``), item weight = SRAM bytes it adds
(:meth:`Device.group_item_bytes`), capacity = SRAM capacity minus the fixed part, value = the
local-global information-gain score :func:`ig_scores`.
"""

from __future__ import annotations

import numpy as np

PATTERNS = ("uniform", "triangle", "inverted", "bottleneck")


def pattern_weights(pattern: str, n_layers: int) -> np.ndarray:
    idx = np.arange(n_layers, dtype=np.float64)
    if pattern == "uniform":
        return np.ones(n_layers)
    if pattern == "triangle":
        return n_layers - idx
    if pattern in ("inverted", "inverted_triangle", "inverted-triangle"):
        return idx + 1
    if pattern == "bottleneck":
        return np.abs(idx - (n_layers - 1) / 2) + 1
    raise ValueError(f"unknown GD-HLA pattern {pattern!r}; one of {', '.join(PATTERNS)}")


def apportion(weights: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total``, each <= ``cap`` (largest
    remainder; ties go to the lower index)."""
    n = len(weights)
    total = min(total, n * cap)
    out = np.zeros(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    remaining = total
    while remaining > 0:
        w = np.where(free, weights, 0.0)
        share = w / w.sum() * remaining
        base = np.minimum(np.floor(share).astype(np.int64), cap - out)
        out += base
        left = remaining - int(base.sum())
        frac = np.where(free & (out < cap), share - np.floor(share), -1.0)
        for i in sorted(range(n), key=lambda i: (-frac[i], i))[:left]:
            if frac[i] >= 0:
                out[i] += 1
        remaining = total - int(out.sum())
        free = out < cap
        if remaining > 0 and not free.any():
            break
    return out


def gd_hla(pattern: str, n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Geometrically-defined allocation: sorted layer lists per client (``len == min(k_i, n)``)."""
    budgets = [max(0, min(int(k), n_layers)) for k in budgets]
    quota = apportion(pattern_weights(pattern, n_layers), sum(budgets), len(budgets))
    alloc: list[list[int]] = [[] for _ in budgets]
    order = sorted(range(len(budgets)), key=lambda i: (-budgets[i], i))
    w = pattern_weights(pattern, n_layers)
    for i in order:
        # layers with the most remaining quota; ties: higher pattern weight, then lower index
        cand = sorted(range(n_layers), key=lambda j: (-quota[j], -w[j], j))[: budgets[i]]
        for j in cand:
            quota[j] -= 1
        alloc[i] = sorted(cand)
    return alloc


def rgd_hla(pattern: str, n_layers: int, budgets: list[int], seed: int) -> list[list[int]]:
    """Randomized GD-HLA: each client's layers drawn without replacement, p ~ pattern weight."""
    rng = np.random.default_rng(seed)
    w = pattern_weights(pattern, n_layers)
    p = w / w.sum()
    out = []
    for k in budgets:
        k = max(0, min(int(k), n_layers))
        out.append(sorted(rng.choice(n_layers, size=k, replace=False, p=p).tolist()))
    return out


def fim_hla(scores: np.ndarray, budgets: list[int]) -> list[list[int]]:
    """Top-k layers by Fisher score. ``scores``: (n_layers,) shared by all clients, or
    (n_clients, n_layers) one row per client. Ties go to the higher layer."""
    s = np.asarray(scores, dtype=np.float64)
    n_layers = s.shape[-1]
    out = []
    for i, k in enumerate(budgets):
        row = s if s.ndim == 1 else s[i]
        k = max(0, min(int(k), n_layers))
        order = sorted(range(n_layers), key=lambda j: (-row[j], -j))
        out.append(sorted(order[:k]))
    return out


def homogeneous(n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Homogeneous federated LoRA: every client trains the same layers, the top ``min k_i``
    (the most the weakest device can hold; the top layers need the shortest backward pass)."""
    k = max(0, min(min(budgets), n_layers))
    layers = list(range(n_layers - k, n_layers))
    return [list(layers) for _ in budgets]


# ------------------------------------------------------------------------------ Fed-piLot
def knapsack(values: list[float], weights: list[float], capacity: float, resolution: int = 4096):
    """0/1 knapsack: indices of the chosen items. Weights are rounded *up* to units of
    ``capacity / resolution``, so the chosen set never exceeds ``capacity``."""
    n = len(values)
    if capacity <= 0 or n == 0:
        return []
    unit = capacity / resolution
    w = [int(np.ceil(x / unit - 1e-12)) if x > 0 else 0 for x in weights]
    cap = resolution
    best = np.zeros(cap + 1)
    keep = np.zeros((n, cap + 1), dtype=bool)
    for i in range(n):
        wi, vi = w[i], values[i]
        if wi > cap:
            continue
        cand = np.full(cap + 1, -np.inf)
        cand[wi:] = best[: cap + 1 - wi] + vi
        take = cand > best
        keep[i] = take
        best = np.where(take, cand, best)
    chosen = []
    c = cap
    for i in range(n - 1, -1, -1):
        if keep[i, c]:
            chosen.append(i)
            c -= w[i]
    chosen.sort()
    assert sum(weights[i] for i in chosen) <= capacity * (1 + 1e-9)
    return chosen


def ig_scores(local: np.ndarray, global_update: np.ndarray | None, gamma: float = 0.5):
    """Local-global information-gain score per item: ``gamma`` x the client's normalized
    gradient-norm score + (1-gamma) x the normalized norm of the item's last global update
    (uniform before any update). Both parts sum to 1 over items."""
    loc = np.asarray(local, dtype=np.float64)
    loc = loc / loc.sum() if loc.sum() > 0 else np.full_like(loc, 1 / len(loc))
    if global_update is None or np.sum(global_update) <= 0:
        glob = np.full_like(loc, 1 / len(loc))
    else:
        g = np.asarray(global_update, dtype=np.float64)
        glob = g / g.sum()
    return gamma * loc + (1 - gamma) * glob


def pilot_assign(
    items: list[tuple[int, str]],
    values: np.ndarray,
    item_bytes: dict[str, float],
    capacity_bytes: float,
    fixed_bytes: float,
) -> list[tuple[int, str]]:
    """One client's Fed-piLot assignment: the (layer, group) items of greatest total value whose
    SRAM fits in ``capacity_bytes - fixed_bytes``."""
    weights = [item_bytes[g] for _, g in items]
    idx = knapsack(list(map(float, values)), weights, capacity_bytes - fixed_bytes)
    return [items[i] for i in idx]


def layer_counts(alloc: list[list[int]], n_layers: int) -> np.ndarray:
    """How many clients train each layer."""
    c = np.zeros(n_layers, dtype=np.int64)
    for layers in alloc:
        for j in layers:
            c[j] += 1
    return c
