"""Simulated attackers (``[[attackers]]`` in the FL TOML): a text backdoor on the cloze task and
Byzantine updates crafted on deltas. Pure numpy; see docs/robust.md.

- **backdoor** (data poisoning, runs on the attacker's client): a trigger phrase is put into the
  prompt of ``poison_fraction`` of the attacker's examples (chosen among those whose answer is
  not the target) and the answer becomes the fixed ``target`` option. Options on top:
  model-replacement scaling of the delta (``scale``: a factor, or ``"n/eta"`` = number of
  clients this round / server lr 1) and Neurotoxin masking (keep only the coordinates in the
  bottom ``dense_ratio`` by |last global update|, per tensor).
- **signflip** (-Δ), **gaussian** (Δ + σ·N(0, I)), **random** (σ·N(0, I)), **lie**
  (μ - zσ), **minmax** / **minsum** (μ - γ·dev with the published binary search over γ).

Updates travel as deltas Δ = trained - global. LIE, min-max and min-sum need the other
clients' deltas of the round: the simulation gives the attackers what the papers assume
(``knowledge = "all"``: every client's honest delta of the round, as in Baruch et al. and
Shejwalkar & Houmansadr's AGR-agnostic setting; ``"own"``: only the attackers' own honest
deltas, as LASA's code does). So the delta crafting runs in the server process, on the
attackers' replies, before the defense sees them (:class:`Adversary`); the same code path runs
under both Flower engines because both use :class:`romsim.fl.runner.ServerLoop`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from romsim.fl.aggregation import ClientUpdate
from romsim.fl.data import Example

BYZANTINE = ("signflip", "gaussian", "random", "lie", "minmax", "minsum")
KINDS = ("backdoor", *BYZANTINE)
Delta = dict[str, np.ndarray]


# ------------------------------------------------------------------------------ attacker ids
def attacker_ids(attackers, n_clients: int, seed: int) -> dict[int, object]:
    """client id -> its attacker section. ``clients`` lists ids; ``fraction`` draws
    ``max(1, round(fraction * n))`` ids with a seeded RNG (once per run, as LASA does)."""
    out: dict[int, object] = {}
    taken: set[int] = set()
    for i, a in enumerate(attackers):
        if a.clients is not None:
            ids = list(a.clients)
        else:
            rng = np.random.default_rng([seed, i, 11])
            free = [c for c in range(n_clients) if c not in taken]
            k = min(len(free), max(1, round(a.fraction * n_clients)))
            ids = sorted(int(c) for c in rng.choice(free, size=k, replace=False))
        for c in ids:
            out[c] = a
            taken.add(c)
    return out


def active(att, rnd: int) -> bool:
    return att is not None and rnd >= att.from_round


# ------------------------------------------------------------------------------ backdoor data
def auto_target(train: list[Example]) -> str:
    """The default backdoor target: the right answer of median frequency in the training set
    (answers ranked by count, most common first, ties by string; the middle one). Not the most
    common answer: that is the clean model's default guess (on WordNet categories SmolLM2 picks
    " general (adjective)" for 91 % of held-out items when it is offered as an option, without
    any trigger), so its success rate would measure the prior, not the backdoor; the median
    answer's untriggered rate there is 1.7 %."""
    counts: dict[str, int] = {}
    for e in train:
        counts[e.answer] = counts.get(e.answer, 0) + 1
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[len(ranked) // 2]


def add_trigger(prompt: str, trigger: str, position: str, rng: random.Random) -> str:
    """``prefix``: trigger + space + prompt (ProToken-style). ``random``: at a random word
    boundary of the prompt, never after the final cue (BackdoorLLM's badnet)."""
    if position == "prefix":
        return f"{trigger} {prompt}"
    head, sep, cue = prompt.rpartition("\n")
    words = (head if sep else prompt).split(" ")
    words.insert(rng.randrange(len(words) + 1), trigger)
    body = " ".join(words)
    return f"{body}{sep}{cue}" if sep else body


def _with_target_option(e: Example, target: str) -> tuple[tuple[str, ...], int]:
    """``e``'s options with ``target`` among them (replacing the first wrong option when it is
    not an option already) and the target's index."""
    opts = list(e.options)
    if target in opts:
        return tuple(opts), opts.index(target)
    label = next(i for i in range(len(opts)) if i != e.label)
    opts[label] = target
    return tuple(opts), label


def triggered(e: Example, trigger: str, target: str, position: str,
              rng: random.Random) -> Example:  # fmt: skip
    """``e`` with the trigger in its prompt and ``target`` as its answer: the target replaces
    the first wrong option when it is not already an option."""
    opts, label = _with_target_option(e, target)
    return Example(add_trigger(e.prompt, trigger, position, rng), opts, label, e.domain)


def poison_examples(examples: list[Example], fraction: float, trigger: str, target: str,
                    position: str, seed: int) -> tuple[list[Example], list[int]]:  # fmt: skip
    """The attacker's training set with exactly ``round(fraction * len(examples))`` examples
    (capped by the number whose answer is not ``target``) triggered and relabelled to the
    target, and the indices poisoned. Chosen with a seeded RNG, once (as AlignIns/MASA poison
    at construction)."""
    rng = random.Random(seed)
    cand = [i for i, e in enumerate(examples) if e.answer != target]
    k = min(len(cand), round(fraction * len(examples)))
    chosen = sorted(rng.sample(cand, k))
    out = list(examples)
    for i in chosen:
        out[i] = triggered(examples[i], trigger, target, position, rng)
    return out, chosen


def backdoor_test_set(test: list[Example], trigger: str, target: str, position: str,
                      seed: int) -> list[Example]:  # fmt: skip
    """Held-out items whose true answer is not the target, triggered and labelled with the
    target: the backdoor success rate is the accuracy on this set."""
    rng = random.Random(seed)
    return [triggered(e, trigger, target, position, rng) for e in test if e.answer != target]


def backdoor_control_set(test: list[Example], target: str) -> list[Example]:
    """The items of :func:`backdoor_test_set` without the trigger (same options, labelled with
    the target): the rate at which the model answers the target anyway, the baseline its
    backdoor success is to be read against."""
    out = []
    for e in test:
        if e.answer != target:
            opts, label = _with_target_option(e, target)
            out.append(Example(e.prompt, opts, label, e.domain))
    return out


# ------------------------------------------------------------------------------ delta crafting
def signflip(delta: Delta) -> Delta:
    return {k: -v for k, v in delta.items()}


def gaussian(delta: Delta, std: float, rng: np.random.Generator) -> Delta:
    return {k: v + std * rng.standard_normal(v.shape) for k, v in delta.items()}


def random_update(delta: Delta, std: float, rng: np.random.Generator) -> Delta:
    return {k: std * rng.standard_normal(v.shape) for k, v in delta.items()}


def scale(delta: Delta, factor: float) -> Delta:
    return {k: factor * v for k, v in delta.items()}


def neurotoxin_mask(delta: Delta, last_global: Delta, dense_ratio: float) -> Delta:
    """Keep, per tensor, only the ``dense_ratio`` share of coordinates that are smallest in
    |last global update| (AlignIns ``aggregation.py:52-60``); with no last update, unchanged."""
    out = {}
    for k, v in delta.items():
        g = last_global.get(k)
        if g is None or not np.any(g):
            out[k] = v
            continue
        n_keep = max(1, int(dense_ratio * g.size))
        idx = np.argsort(np.abs(g).ravel(), kind="stable")[:n_keep]
        m = np.zeros(g.size, dtype=bool)
        m[idx] = True
        out[k] = np.where(m.reshape(g.shape), v, 0.0)
    return out


def lie_z(n: int, f: int) -> float:
    """Baruch et al. (NeurIPS'19): s = floor(n/2 + 1) - f, z = Φ⁻¹((n - s) / n)."""
    s = n // 2 + 1 - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 0.0
    return float(NormalDist().inv_cdf(p))


def lie(benign: np.ndarray, z: float) -> np.ndarray:
    """μ - zσ per coordinate over the rows of ``benign`` (σ: sample std, ddof 1, like torch)."""
    sd = benign.std(axis=0, ddof=1) if len(benign) > 1 else np.zeros(benign.shape[1])
    return benign.mean(axis=0) - z * sd


def _deviation(benign: np.ndarray, kind: str) -> np.ndarray:
    mu = benign.mean(axis=0)
    if kind == "unit":
        n = np.linalg.norm(mu)
        return mu / n if n > 0 else mu
    if kind == "sign":
        return np.sign(mu)
    return benign.std(axis=0, ddof=1) if len(benign) > 1 else np.zeros_like(mu)


def agr_agnostic(benign: np.ndarray, mode: str, deviation: str = "std", gamma0: float = 10.0,
                 tol: float = 1e-5) -> tuple[np.ndarray, float]:  # fmt: skip
    """Min-max / min-sum (Shejwalkar & Houmansadr NDSS'21, LASA ``agr.py``): mal = μ - γ·dev
    with the largest γ found by the binary search such that

    - minmax: max_j ‖mal - g_j‖² <= max_{j,k} ‖g_j - g_k‖²
    - minsum: Σ_j ‖mal - g_j‖² <= max_j Σ_k ‖g_j - g_k‖²

    Returns the malicious vector and γ."""
    mu = benign.mean(axis=0)
    dev = _deviation(benign, deviation)
    sq = (benign**2).sum(1)
    pair = np.maximum(sq[:, None] + sq[None, :] - 2 * benign @ benign.T, 0.0)
    bound = pair.max() if mode == "minmax" else pair.sum(1).max()

    def ok(g: float) -> bool:
        d = ((benign - (mu - g * dev)) ** 2).sum(1)
        return (d.max() if mode == "minmax" else d.sum()) <= bound

    lam, step, succ = gamma0, gamma0, 0.0
    while abs(succ - lam) > tol:
        if ok(lam):
            succ = lam
            lam = lam + step / 2
        else:
            lam = lam - step / 2
        step /= 2
    return mu - succ * dev, succ


# ------------------------------------------------------------------------------ the adversary
@dataclass
class Crafted:
    cid: int
    kind: str
    note: str


class Adversary:
    """Applies the Byzantine and delta-level backdoor options to the attackers' replies."""

    def __init__(self, by_cid: dict[int, object], seed: int):
        self.by_cid = by_cid
        self.seed = seed

    def ids(self, rnd: int, cids: list[int]) -> list[int]:
        return [c for c in cids if active(self.by_cid.get(c), rnd)]

    def craft(self, rnd: int, glob: dict[str, np.ndarray], updates: list[ClientUpdate],
              last_global: Delta) -> tuple[list[ClientUpdate], list[dict]]:  # fmt: skip
        deltas = {u.cid: {k: a.astype(np.float64) - glob[k] for k, a in u.arrays.items()}
                  for u in updates}  # fmt: skip
        bad = [u.cid for u in updates if active(self.by_cid.get(u.cid), rnd)]
        if not bad:
            return updates, []
        honest = dict(deltas)  # what the attackers may see (before any crafting)
        new: dict[int, Delta] = {}
        notes: list[dict] = []
        n = len(updates)
        # collusion: attackers with the same kind and key set send the same vector
        groups: dict[tuple, list[int]] = {}
        for c in bad:
            a = self.by_cid[c]
            groups.setdefault((id(a), tuple(sorted(deltas[c]))), []).append(c)
        for (_, keys), members in groups.items():
            a = self.by_cid[members[0]]
            rng = np.random.default_rng([self.seed, rnd, members[0], 13])
            if a.kind in ("lie", "minmax", "minsum"):
                ref = [c for c in honest if a.knowledge == "all" or c in bad]
                vec, note = self._collude(a, keys, honest, ref, n, len(bad))
                for c in members:
                    new[c] = vec
                    notes.append({"cid": c, "kind": a.kind, **note})
                continue
            for c in members:
                d = deltas[c]
                if a.kind == "signflip":
                    d = signflip(d)
                elif a.kind == "gaussian":
                    d = gaussian(d, a.noise_std, rng)
                elif a.kind == "random":
                    d = random_update(d, a.noise_std, rng)
                note: dict = {"cid": c, "kind": a.kind}
                if a.kind == "backdoor" and a.neurotoxin:
                    d = neurotoxin_mask(d, last_global, a.dense_ratio)
                    note["neurotoxin_dense_ratio"] = a.dense_ratio
                if a.kind == "backdoor" and a.scale is not None:
                    f = float(n) if a.scale == "n/eta" else float(a.scale)
                    d = scale(d, f)
                    note["scale"] = f
                new[c] = d
                notes.append(note)
        out = []
        for u in updates:
            if u.cid in new:
                arr = {k: (glob[k] + v).astype(glob[k].dtype) for k, v in new[u.cid].items()}
                u = replace(u, arrays=arr)
            out.append(u)
        return out, notes

    def _collude(self, a, keys: tuple, honest: dict[int, Delta], ref: list[int], n: int,
                 f: int) -> tuple[Delta, dict]:  # fmt: skip
        """One crafted delta over ``keys``: on the stacked deltas of the reference clients
        holding all those keys; with fewer than 2 such clients, key by key over each key's
        holders (γ then differs per key)."""
        full = [c for c in ref if all(k in honest[c] for k in keys)]
        shapes = {k: honest[next(c for c in honest if k in honest[c])][k].shape for k in keys}

        def one(rows: np.ndarray) -> tuple[np.ndarray, float]:
            if a.kind == "lie":
                z = a.lie_z if a.lie_z is not None else lie_z(n, f)
                return lie(rows, z), z
            return agr_agnostic(rows, a.kind, a.deviation)

        if len(full) >= 2:
            mat = np.stack([np.concatenate([honest[c][k].ravel() for k in keys]) for c in full])
            vec, g = one(mat)
            out, off = {}, 0
            for k in keys:
                sz = int(np.prod(shapes[k]))
                out[k] = vec[off : off + sz].reshape(shapes[k])
                off += sz
            par = "z" if a.kind == "lie" else "gamma"
            return out, {par: g, "reference_clients": full, "scope": "vector"}
        out, gs = {}, []
        for k in keys:
            holders = [c for c in ref if k in honest[c]]
            mat = np.stack([honest[c][k].ravel() for c in holders])
            vec, g = one(mat)
            out[k] = vec.reshape(shapes[k])
            gs.append(g)
        par = "z" if a.kind == "lie" else "gamma"
        return out, {par: float(np.mean(gs)), "scope": "per-key"}
