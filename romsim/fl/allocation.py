"""Which LoRA modules each client trains in a round. Pure functions (numpy only).

Conventions: layers are numbered 0 (next to the embeddings, "bottom") to n-1 (next to the LM
head, "top"). A client's budget ``k`` (layers it can train) comes from the device's SRAM
(:attr:`romsim.fl.devices.Device.max_layers`). Layer indices are exact integers everywhere
(the official Fed-HeLLo code selects frozen layers by substring match of the parameter name,
which also freezes layers 10 and 11 whenever layer 0 or 1 is unassigned; romsim does not copy
that, see docs/federated.md, "Fed-HeLLo as published").

Fed-HeLLo (arXiv 2506.12213; official code TNI-playground/Fed_HeLLo) heterogeneous LoRA
allocation (HLA):

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
- **RGD-HLA** (:func:`rgd_hla`): each client draws its ``k_i`` distinct layers at random,
  without replacement, with probability proportional to the **GD-HLA layer counts**
  (:func:`gd_hla_prior`: GD-HLA over one client per capacity group, counts / total). With
  capacities 6, 9, 12 of 12 layers the bottleneck prior is exactly the official
  ``layer_prob = [1/9, 1/9, 1/9, 2/27, 2/27, 1/27, 1/27, 1/27, 2/27, 1/9, 1/9, 1/9]``
  (:data:`OFFICIAL_BOTTLENECK_12`). A new draw every round (seeded).
- **FIM-HLA** as published (:func:`fim_prior`, :func:`fim_hla`): per-layer Fisher scores
  (computed on the server on held-out data, :func:`romsim.fl.train.fisher_scores`) are split
  into three importance groups by 1-D k-means (:func:`fisher_groups`, exact); layers of the
  low / middle / high group get prior weight 1/27, 2/27, 1/9, and clients sample their layers
  from that prior like RGD-HLA. The refresh schedule lives in :class:`romsim.fl.strategy.Planner`.
  :func:`fim_topk` is romsim's earlier reading (deterministic top-``k_i`` by score).

Baselines the Fed-HeLLo paper compares against:

- **FedRA** (arXiv 2311.11227, :func:`fedra`): each round every client trains ``k_i`` layers
  drawn uniformly at random without replacement (a new random allocation matrix every round).
- **Exclusive** (:func:`exclusive`): only clients that can train every layer take part.
- **Straggler** (:func:`straggler`): every client trains the same ``min_i k_i`` layers spread
  evenly over depth (the official 6_6_6 run: layers 0, 2, 4, 6, 8, 10 of 12).
- **HetLoRA** (arXiv 2401.06432, :func:`hetlora_ranks`): every client trains every layer at a
  rank that shrinks with its budget; see :func:`romsim.fl.aggregation.hetlora_aggregate`.
- :func:`homogeneous` (``fedavg``) is romsim's own baseline: everyone the top ``min_i k_i``.

Fed-piLot (arXiv 2410.10200): each client's assignment is a 0/1 knapsack over
(layer, group) items (groups ``attn``, ``mlp``), item weight = SRAM bytes it adds
(:meth:`Device.group_item_bytes`), capacity = SRAM capacity minus the fixed part, value = the
local-global information-gain score :func:`ig_scores`.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

PATTERNS = ("uniform", "triangle", "inverted", "bottleneck")

# The official Fed-HeLLo RGD prior (config/experiments/cifar100_vit_lora/depthffm_fim/*.yaml)
OFFICIAL_BOTTLENECK_12 = np.array(
    [float(Fraction(x, 27)) for x in (3, 3, 3, 2, 2, 1, 1, 1, 2, 3, 3, 3)]
)  # [1/9, 1/9, 1/9, 2/27, 2/27, 1/27, 1/27, 1/27, 2/27, 1/9, 1/9, 1/9]
# FIM-HLA prior weight of the low / middle / high Fisher group (official fim engine)
FIM_GROUP_WEIGHTS = (1 / 27, 2 / 27, 1 / 9)


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


def _clip_budgets(budgets, n_layers: int) -> list[int]:
    return [max(0, min(int(k), n_layers)) for k in budgets]


def gd_hla(pattern: str, n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Geometrically-defined allocation: sorted layer lists per client (``len == min(k_i, n)``)."""
    budgets = _clip_budgets(budgets, n_layers)
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


def gd_hla_prior(pattern: str, n_layers: int, budgets: list[int]) -> np.ndarray:
    """RGD-HLA's sampling prior: the GD-HLA layer counts of ``budgets`` (one budget per
    capacity group), normalised. ``gd_hla_prior("bottleneck", 12, [6, 9, 12])`` is
    :data:`OFFICIAL_BOTTLENECK_12`. Layers GD-HLA gives nobody get probability 0; at least
    ``max(budgets)`` layers have a positive probability, so every budget can be drawn."""
    counts = layer_counts(gd_hla(pattern, n_layers, budgets), n_layers).astype(np.float64)
    if counts.sum() <= 0:
        raise ValueError("every budget is 0: no prior")
    return counts / counts.sum()


def sample_layers(p: np.ndarray, budgets: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Each client's ``k_i`` distinct layers, drawn without replacement with probabilities
    ``p`` (successive sampling, as ``np.random.choice(..., p=p, replace=False)`` in the
    official code), sorted."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    n = len(p)
    out = []
    for k in _clip_budgets(budgets, n):
        k = min(k, int(np.count_nonzero(p > 0)))
        out.append(sorted(rng.choice(n, size=k, replace=False, p=p).tolist()))
    return out


def rgd_hla(
    pattern: str,
    n_layers: int,
    budgets: list[int],
    seed,
    prior_budgets: list[int] | None = None,
) -> list[list[int]]:
    """Randomized GD-HLA: each client's layers drawn without replacement, p = the GD-HLA
    layer counts of ``prior_budgets`` (default: ``budgets``) normalised."""
    p = gd_hla_prior(pattern, n_layers, prior_budgets or budgets)
    return sample_layers(p, budgets, np.random.default_rng(seed))


def fisher_groups(scores: np.ndarray, n_groups: int = 3) -> np.ndarray:
    """Importance group per layer: 0 = lowest scores ... ``n_groups - 1`` = highest, from the
    exact 1-D k-means optimum (what the official ``KMeans(n_clusters=3)`` searches for; in 1-D
    the optimal clusters are runs of the sorted scores, found here by dynamic programming).
    Groups are numbered by their centre, so the high-Fisher group always gets the high weight
    (the official code uses KMeans' arbitrary label order). Fewer distinct scores than groups:
    one group per distinct value."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    order = np.argsort(s, kind="stable")
    v = s[order]
    k = min(n_groups, len(np.unique(v)))
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])

    def sse(i: int, j: int) -> float:  # v[i:j]
        m = j - i
        return float(c2[j] - c2[i] - (c1[j] - c1[i]) ** 2 / m)

    inf = float("inf")
    cost = np.full((k + 1, n + 1), inf)
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            for i in range(g - 1, j):
                c = cost[g - 1, i] + sse(i, j)
                if c < cost[g, j] - 1e-15:
                    cost[g, j], cut[g, j] = c, i
    labels_sorted = np.zeros(n, dtype=np.int64)
    j = n
    for g in range(k, 0, -1):
        i = int(cut[g, j])
        labels_sorted[i:j] = g - 1
        j = i
    out = np.empty(n, dtype=np.int64)
    out[order] = labels_sorted
    if k < n_groups and k >= 2:  # lowest stays 0, highest becomes n_groups - 1
        out = np.where(out == k - 1, n_groups - 1, out)
    return out


def fim_prior(scores: np.ndarray) -> np.ndarray:
    """FIM-HLA's sampling prior from per-layer Fisher scores: weight 1/27, 2/27, 1/9 for the
    low, middle and high group of :func:`fisher_groups`, normalised. All scores equal:
    uniform."""
    g = fisher_groups(scores)
    w = np.array(FIM_GROUP_WEIGHTS)[g]
    return w / w.sum()


def fim_hla(scores: np.ndarray, budgets: list[int], seed) -> list[list[int]]:
    """FIM-HLA as published: layers sampled like RGD-HLA from :func:`fim_prior`."""
    return sample_layers(fim_prior(scores), budgets, np.random.default_rng(seed))


def fim_topk(scores: np.ndarray, budgets: list[int]) -> list[list[int]]:
    """romsim's earlier FIM-HLA reading: the top ``k_i`` layers by score. ``scores``:
    (n_layers,) shared by all clients, or (n_clients, n_layers) one row per client. Ties go to
    the higher layer."""
    s = np.asarray(scores, dtype=np.float64)
    n_layers = s.shape[-1]
    out = []
    for i, k in enumerate(budgets):
        row = s if s.ndim == 1 else s[i]
        k = max(0, min(int(k), n_layers))
        order = sorted(range(n_layers), key=lambda j: (-row[j], -j))
        out.append(sorted(order[:k]))
    return out


def fedra(n_layers: int, budgets: list[int], seed) -> list[list[int]]:
    """FedRA: ``k_i`` layers per client, uniformly at random without replacement."""
    return sample_layers(np.ones(n_layers), budgets, np.random.default_rng(seed))


def homogeneous(n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Homogeneous federated LoRA: every client trains the same layers, the top ``min k_i``
    (the most the weakest device can hold; the top layers need the shortest backward pass)."""
    k = max(0, min(min(budgets), n_layers))
    layers = list(range(n_layers - k, n_layers))
    return [list(layers) for _ in budgets]


def straggler(n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Fed-HeLLo's "straggler" baseline: every client the same ``k = min k_i`` layers, spread
    evenly over depth (``floor(i n / k)``, i < k: layers 0, 2, ..., 10 for 6 of 12)."""
    k = max(0, min(min(budgets), n_layers))
    layers = [i * n_layers // k for i in range(k)]
    return [list(layers) for _ in budgets]


def exclusive(n_layers: int, budgets: list[int]) -> list[list[int]]:
    """Fed-HeLLo's "exclusive" baseline: clients that can train every layer train all of them;
    the others train nothing (they sit the round out)."""
    return [list(range(n_layers)) if k >= n_layers else [] for k in budgets]


def hetlora_ranks(rank: int, n_layers: int, budgets: list[int]) -> list[int]:
    """HetLoRA ranks: the share of the LoRA rank that matches the share of layers the client
    could train, ``max(1, round(rank * k_i / n))`` (capacities 6/9/12 of 12 at rank 16 give
    8/12/16)."""
    return [max(1, min(rank, int(round(rank * min(k, n_layers) / n_layers)))) for k in budgets]


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


def set_probabilities(p: np.ndarray, k: int) -> np.ndarray:
    """Exact distribution of the *set* of ``k`` layers drawn by successive sampling without
    replacement with probabilities ``p`` (:func:`sample_layers`): entry ``mask`` (bit l = layer
    l) is the probability of that set. Dynamic programming over subsets (n <= 20)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    n = len(p)
    if n > 20:
        raise ValueError("set_probabilities is exact over 2^n subsets: n <= 20")
    prob = np.zeros(1 << n)
    prob[0] = 1.0
    mass = np.zeros(1 << n)  # sum of p over the subset
    for s in range(1, 1 << n):
        low = (s & -s).bit_length() - 1
        mass[s] = mass[s & (s - 1)] + p[low]
    size = np.array([s.bit_count() for s in range(1 << n)])
    for m in range(k):
        for s in np.flatnonzero((size == m) & (prob > 0)):
            rest = 1.0 - mass[s]
            if rest <= 1e-15:
                continue
            for j in range(n):
                if not s >> j & 1 and p[j] > 0:
                    prob[s | 1 << j] += prob[s] * p[j] / rest
    prob[size != k] = 0.0
    return prob


def inclusion_probabilities(p: np.ndarray, k: int) -> np.ndarray:
    """Exact probability that layer l is among the ``k`` layers :func:`sample_layers` draws
    with probabilities ``p`` (not ``k * p``: sampling without replacement flattens the prior)."""
    prob = set_probabilities(p, k)
    n = len(p)
    masks = np.flatnonzero(prob)
    bits = (masks[:, None] >> np.arange(n)) & 1
    return prob[masks] @ bits


def layer_counts(alloc: list[list[int]], n_layers: int) -> np.ndarray:
    """How many clients train each layer."""
    c = np.zeros(n_layers, dtype=np.int64)
    for layers in alloc:
        for j in layers:
            c[j] += 1
    return c
