"""Robust aggregation (``[strategy] defense = ...``) over heterogeneous LoRA key sets. Numpy.

Every defense takes the round's client updates (trained arrays; the defense works on the
deltas Δ_i = trained - global) and returns the new *spatial* global adapter (global + robust
delta, only for keys somebody trained), the updates it kept (STAgg's coverage uses them), the
clients it flagged and a JSON-able report (who was kept and why, scores, fallbacks, seconds).

=========== =================================================================================
none        layer-wise FedAvg (no defense)
lasa        LASA (Xu et al., WACV'25): median-norm clipping, top-k sparsification, per-key
            MZ-scores on norm and sign ratio, unweighted mean of the survivors per key
alignins    AlignIns (CVPR'25): cosine with the global model (TDA) and masked principal-sign
            alignment (MPSA) MZ filter, post-filter median-norm clipping, weighted mean
masa        MASA (WACV'25): pre-unlearning fusion, server-side unlearning on a held-out set,
            median deviation score of the unlearning loss
median      coordinate-wise median      (Flower's ``aggregate_median``)
trimmed     coordinate-wise trimmed mean (Flower's ``aggregate_trimmed_avg``)
krum        Krum / ``multikrum``        (Flower's ``aggregate_krum`` on homogeneous key sets)
bulyan      Bulyan                      (Flower's ``aggregate_bulyan`` on homogeneous key sets)
=========== =================================================================================

Key sets differ under HLA and Fed-piLot. Coordinate-wise rules (median, trimmed) are
separable, so Flower's function applied key by key over the key's holders *is* the rule.
Krum and Bulyan need whole-vector distances: with one key set they call Flower's functions on
the concatenated deltas; otherwise they run key by key over the holders (romsim's own code,
the same formulas). LASA is per key by design; AlignIns' and MASA's tests are per client
(over the keys it holds) and their clipping/aggregation per key when key sets differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from romsim.fl.aggregation import ClientUpdate

DEFENSES = ("none", "lasa", "alignins", "masa", "median", "trimmed", "krum", "multikrum",
            "bulyan")  # fmt: skip
Delta = dict[str, np.ndarray]
# a std below this share of the largest |value| is rounding noise: treated as 0 (all equal)
STD_TOL = 1e-9


@dataclass
class DefenseResult:
    arrays: dict[str, np.ndarray]  # new spatial global adapter
    counts: dict[str, int]  # per key: clients that entered its aggregate
    kept: list[ClientUpdate]  # updates that entered some key's aggregate
    flagged: list[int]  # clients the defense judged malicious
    report: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers
def mz_scores(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """MZ(x_i) = |x_i - median(x)| / std(x) (population std, as LASA/AlignIns). std = 0 (or a
    non-finite value) gives all zeros and a note: all values are equal, nobody is an outlier.
    (The official code divides by 0 there; NaN < λ is False, so it falls back to all clients:
    the same outcome.)"""
    x = np.asarray(x, dtype=np.float64)
    sd = float(np.std(x))
    if not np.isfinite(sd) or sd <= STD_TOL * float(np.abs(x).max(initial=0.0)):
        return np.zeros_like(x), "std = 0: all equal, all pass"
    return np.abs(x - np.median(x)) / sd, None


def signed_mds(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """MASA's median deviation score (x_i - median) / std, signed."""
    x = np.asarray(x, dtype=np.float64)
    sd = float(np.std(x))
    if not np.isfinite(sd) or sd <= STD_TOL * float(np.abs(x).max(initial=0.0)):
        return np.zeros_like(x), "std = 0: all equal, all pass"
    return (x - np.median(x)) / sd, None


def deltas_of(glob: dict[str, np.ndarray], updates: list[ClientUpdate]) -> dict[int, Delta]:
    return {u.cid: {k: a.astype(np.float64) - glob[k] for k, a in u.arrays.items()}
            for u in updates}  # fmt: skip


def homogeneous(updates: list[ClientUpdate]) -> bool:
    return len({tuple(sorted(u.arrays)) for u in updates}) <= 1


def _flat(d: Delta, keys=None) -> np.ndarray:
    keys = sorted(d) if keys is None else keys
    return np.concatenate([d[k].ravel() for k in keys]) if keys else np.zeros(0)


def _norm(d: Delta) -> float:
    return float(np.sqrt(sum(float((v**2).sum()) for v in d.values())))


def _holders(deltas: dict[int, Delta]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c, d in deltas.items():
        for k in d:
            out.setdefault(k, []).append(c)
    return out


def _clip(deltas: dict[int, Delta], who: list[int], scope: str) -> tuple[dict[int, Delta], dict]:
    """Clip ``deltas`` to the median norm over ``who``: of the whole update (``model``), or of
    each key over its holders in ``who`` (``key``: key sets differ, so whole-update norms of
    clients holding 6 and 30 layers are not comparable)."""
    out = {c: dict(d) for c, d in deltas.items()}
    if not who:
        return out, {}
    if scope == "model":
        c_med = float(np.median([_norm(deltas[c]) for c in who]))
        for c, d in deltas.items():
            n = _norm(d)
            f = min(1.0, c_med / n) if n > 0 else 1.0
            out[c] = {k: v * f for k, v in d.items()}
        return out, {"clip_norm": c_med}
    hold = _holders({c: deltas[c] for c in who})
    for k, hs in hold.items():
        c_med = float(np.median([np.linalg.norm(deltas[c][k]) for c in hs]))
        for c, d in deltas.items():
            if k in d:
                n = float(np.linalg.norm(d[k]))
                out[c][k] = d[k] * (min(1.0, c_med / n) if n > 0 else 1.0)
    return out, {}


def _finish(glob, deltas: dict[int, Delta], weights: dict[int, float],
            members: dict[str, list[int]], updates: list[ClientUpdate], flagged: list[int],
            report: dict, weighted: bool = True) -> DefenseResult:  # fmt: skip
    """Mean of ``deltas`` per key over ``members[key]`` (example-weighted or not)."""
    arrays = {k: v.copy() for k, v in glob.items()}
    counts = {k: 0 for k in glob}
    used: set[int] = set()
    for k, cs in members.items():
        if not cs:
            continue
        w = np.array([weights[c] if weighted else 1.0 for c in cs], dtype=np.float64)
        acc = sum(wi * deltas[c][k] for wi, c in zip(w, cs, strict=True))
        arrays[k] = (glob[k].astype(np.float64) + acc / w.sum()).astype(glob[k].dtype)
        counts[k] = len(cs)
        used.update(cs)
    kept = [u for u in updates if u.cid in used]
    report["kept"] = sorted(used)
    report["flagged"] = sorted(flagged)
    return DefenseResult(arrays, counts, kept, sorted(flagged), report)


def _scope(opt: str, updates: list[ClientUpdate]) -> str:
    if opt != "auto":
        return opt
    return "model" if homogeneous(updates) else "key"


# ------------------------------------------------------------------------------ LASA
def top_k_sparsify(d: Delta, sparsity: float) -> Delta:
    """LASA's pre-aggregation sparsification of one client: one threshold over all its (2-D)
    tensors, keep ``|x| > t`` with t the int(N·(1-s))-th largest |x| (strict, as the official
    ``update_mask``)."""
    flat = np.abs(_flat(d))
    k = int(flat.size * (1 - sparsity))
    if k <= 0 or flat.size == 0:
        return {key: np.zeros_like(v) for key, v in d.items()}
    t = np.partition(flat, flat.size - k)[flat.size - k]
    return {key: np.where(np.abs(v) > t, v, 0.0) for key, v in d.items()}


def lasa(glob, updates: list[ClientUpdate], sparsity: float = 0.3, lambda_n: float = 1.0,
         lambda_s: float = 1.0, clip_scope: str = "auto", min_holders: int = 3) -> DefenseResult:  # fmt: skip
    """LASA. A key held by fewer than ``min_holders`` clients is not filtered (with two holders
    both MZ-scores are exactly 1.0, so the official ``< 1.0`` rejects both and falls back to
    all: the same result, said explicitly here); an empty filter result falls back to all
    holders (the official rule). Flagged: clients dropped from at least half of the keys
    where the filter decided."""
    deltas = deltas_of(glob, updates)
    scope = _scope(clip_scope, updates)
    clipped, clip_info = _clip(deltas, list(deltas), scope)
    sparse = {c: top_k_sparsify(d, sparsity) for c, d in clipped.items()}
    members: dict[str, list[int]] = {}
    per_key: dict[str, dict] = {}
    decided = {c: 0 for c in deltas}
    dropped = {c: 0 for c in deltas}
    for k, hs in sorted(_holders(sparse).items()):
        if len(hs) < min_holders:
            members[k] = hs
            per_key[k] = {"holders": hs, "kept": hs, "why": f"only {len(hs)} holders: not filtered"}
            continue
        norms = np.array([np.linalg.norm(sparse[c][k]) for c in hs])
        rho = []
        for c in hs:
            s = np.sign(sparse[c][k])
            nz = float(np.abs(s).sum())
            rho.append(0.5 * (1 + (float(s.sum()) / nz) * (1 - sparsity)) if nz > 0 else 0.5)
        mz_n, note_n = mz_scores(norms)
        mz_s, note_s = mz_scores(np.array(rho))
        ok = [c for c, a, b in zip(hs, mz_n, mz_s, strict=True) if a < lambda_n and b < lambda_s]
        info: dict = {"holders": hs, "mz_norm": mz_n.round(4).tolist(),
                      "mz_sign": mz_s.round(4).tolist()}  # fmt: skip
        if note_n or note_s:
            info["note"] = note_n or note_s
        if not ok:
            members[k] = hs
            info["kept"] = hs
            info["why"] = "nobody passed: fall back to all holders (LASA)"
        else:
            members[k] = ok
            info["kept"] = ok
            for c in hs:
                decided[c] += 1
                dropped[c] += c not in ok
        per_key[k] = info
    flagged = [c for c in deltas if decided[c] and dropped[c] * 2 >= decided[c]]
    report = {"defense": "lasa", "clip_scope": scope, **clip_info,
              "keys_dropped": {str(c): f"{dropped[c]}/{decided[c]}" for c in deltas},
              "per_key": per_key,
              "why": {str(c): f"dropped from {dropped[c]} of {decided[c]} filtered keys"
                      for c in flagged}}  # fmt: skip
    w = {u.cid: u.weight for u in updates}
    return _finish(glob, sparse, w, members, updates, flagged, report, weighted=False)


# ------------------------------------------------------------------------------ AlignIns
def alignins(glob, updates: list[ClientUpdate], reference: Delta | None = None,
             sparsity: float = 0.3, lambda_s: float = 1.0, lambda_c: float = 1.0,
             clip_scope: str = "auto", min_clients: int = 3) -> DefenseResult:  # fmt: skip
    """AlignIns. TDA_i = cos(Δ_i, reference) over the keys client i holds (``reference``: the
    global adapter, as the official code uses the global model; or the last global update).
    Principal sign per coordinate over that key's holders; MPSA_i over client i's top
    int(d_i·sparsity) coordinates (here 0.3 = *keep* 30 %). Benign iff both MZ < λ. Fewer than
    ``min_clients`` updates: no filter (with two, both MZ are 1.0 and the official code would
    reject both). Nobody benign: the global adapter does not move (the official rule)."""
    deltas = deltas_of(glob, updates)
    ref = {
        k: v.astype(np.float64) for k, v in (reference if reference is not None else glob).items()
    }
    cids = list(deltas)
    hold = _holders(deltas)
    psign = {k: np.sign(sum(np.sign(deltas[c][k]) for c in hs)) for k, hs in hold.items()}
    tda, mpsa = [], []
    for c in cids:
        keys = sorted(deltas[c])
        v, r = _flat(deltas[c], keys), _flat(ref, keys)
        tda.append(float(v @ r / max(np.linalg.norm(v) * np.linalg.norm(r), 1e-6)))
        p = _flat(psign, keys)
        k_top = max(1, int(v.size * sparsity))
        top = np.argpartition(-np.abs(v), k_top - 1)[:k_top]
        mpsa.append(float((np.sign(v[top]) == p[top]).mean()))
    report: dict = {"defense": "alignins", "tda": dict(zip(map(str, cids), tda, strict=True)),
                    "mpsa": dict(zip(map(str, cids), mpsa, strict=True))}  # fmt: skip
    w = {u.cid: u.weight for u in updates}
    if len(cids) < min_clients:
        report["why_all"] = f"only {len(cids)} clients: not filtered"
        benign = cids
    else:
        mz_t, n1 = mz_scores(np.array(tda))
        mz_p, n2 = mz_scores(np.array(mpsa))
        report["mz_tda"] = mz_t.round(4).tolist()
        report["mz_mpsa"] = mz_p.round(4).tolist()
        if n1 or n2:
            report["note"] = n1 or n2
        benign = [c for c, a, b in zip(cids, mz_t, mz_p, strict=True)
                  if a < lambda_c and b < lambda_s]  # fmt: skip
        report["why"] = {str(c): (f"MZ(TDA) {a:.3f}, MZ(MPSA) {b:.3f}")
                         for c, a, b in zip(cids, mz_t, mz_p, strict=True) if c not in benign}  # fmt: skip
    flagged = [c for c in cids if c not in benign]
    if not benign:
        report["fallback"] = "nobody passed: zero update this round (AlignIns)"
        return _finish(glob, deltas, w, {}, updates, flagged, report)
    scope = _scope(clip_scope, updates)
    clipped, info = _clip({c: deltas[c] for c in benign}, benign, scope)
    report.update(info, clip_scope=scope)
    members = {k: [c for c in hs if c in benign] for k, hs in hold.items()}
    return _finish(glob, clipped, w, members, updates, flagged, report)


# ------------------------------------------------------------------------------ MASA
def masa(glob, updates: list[ClientUpdate], unlearn: Callable[[dict[str, np.ndarray]], float],
         fusion_lambda: float = 0.7, delta: float = 1.0) -> DefenseResult:  # fmt: skip
    """MASA. Δ̄ = example-weighted mean per key over its holders; client i's fused model is
    θ + λΔ_i + (1-λ)Δ̄ on its keys and θ + Δ̄ on keys others trained; ``unlearn`` (server-side
    gradient ascent on the held-out set) returns its summed epoch-mean loss L_i; benign iff
    (L_i - median L)/std L < δ. Nobody benign (only with NaN losses): all (the official code
    divides by zero there)."""
    deltas = deltas_of(glob, updates)
    w = {u.cid: u.weight for u in updates}
    hold = _holders(deltas)
    mean = {k: sum(w[c] * deltas[c][k] for c in hs) / sum(w[c] for c in hs)
            for k, hs in hold.items()}  # fmt: skip
    losses = []
    for d in deltas.values():
        fused = {}
        for k, g in glob.items():
            if k in d:
                fused[k] = g + fusion_lambda * d[k] + (1 - fusion_lambda) * mean[k]
            elif k in mean:
                fused[k] = g + mean[k]
            else:
                fused[k] = g.astype(np.float64)
        losses.append(float(unlearn({k: v.astype(np.float32) for k, v in fused.items()})))
    cids = list(deltas)
    mds, note = signed_mds(np.array(losses))
    benign = [c for c, s in zip(cids, mds, strict=True) if s < delta]
    report: dict = {"defense": "masa", "unlearn_loss": dict(zip(map(str, cids), losses, strict=True)),
                    "mds": mds.round(4).tolist(),
                    "why": {str(c): f"MDS {s:.3f} >= {delta}"
                            for c, s in zip(cids, mds, strict=True) if s >= delta}}  # fmt: skip
    if note:
        report["note"] = note
    if not benign:
        benign = cids
        report["fallback"] = "nobody passed: all clients"
    flagged = [c for c in cids if c not in benign]
    members = {k: [c for c in hs if c in benign] for k, hs in hold.items()}
    return _finish(glob, deltas, w, members, updates, flagged, report)


# ------------------------------------------------------------------------------ baselines
def _flwr_agg():
    from flwr.server.strategy import aggregate as fa

    return fa


def _per_key_coordinatewise(glob, updates, fn, name: str) -> DefenseResult:
    deltas = deltas_of(glob, updates)
    hold = _holders(deltas)
    arrays = {k: v.copy() for k, v in glob.items()}
    counts = {k: 0 for k in glob}
    w = {u.cid: u.weight for u in updates}
    homog = homogeneous(updates)
    if homog and updates:
        keys = sorted(deltas[updates[0].cid])
        res = fn([([deltas[u.cid][k] for k in keys], int(w[u.cid])) for u in updates])
        agg = dict(zip(keys, res, strict=True))
    else:
        agg = {k: fn([([deltas[c][k]], int(w[c])) for c in hs])[0] for k, hs in hold.items()}
    for k, v in agg.items():
        arrays[k] = (glob[k].astype(np.float64) + v).astype(glob[k].dtype)
        counts[k] = len(hold[k])
    report = {"defense": name, "impl": "flwr " + ("(one call)" if homog else "(per key)"),
              "kept": sorted(deltas), "flagged": [],
              "note": "coordinate-wise rule: no client is selected or rejected"}  # fmt: skip
    return DefenseResult(arrays, counts, list(updates), [], report)


def median(glob, updates) -> DefenseResult:
    return _per_key_coordinatewise(glob, updates, _flwr_agg().aggregate_median, "median")


def trimmed(glob, updates, beta: float = 0.2) -> DefenseResult:
    fa = _flwr_agg()
    return _per_key_coordinatewise(
        glob, updates, lambda r: fa.aggregate_trimmed_avg(r, beta), "trimmed"
    )


def krum_scores(vecs: np.ndarray, f: int) -> np.ndarray:
    """Krum score: sum of the squared distances to the n - f - 2 nearest others (at least 1;
    Flower's formula)."""
    sq = (vecs**2).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * vecs @ vecs.T, 0.0)
    m = max(1, len(vecs) - f - 2)
    return np.array([np.sort(np.delete(row, i))[:m].sum() for i, row in enumerate(d)])


def krum_select(vecs: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the ``m`` lowest Krum scores (m = 1: Krum)."""
    return sorted(np.argsort(krum_scores(vecs, f), kind="stable")[:m].tolist())


def bulyan_select(vecs: np.ndarray, f: int) -> list[int]:
    """θ = n - 2f rounds of Krum, each removing the winner from the pool."""
    pool = list(range(len(vecs)))
    out = []
    for _ in range(len(vecs) - 2 * f):
        i = pool[krum_select(vecs[pool], f, 1)[0]]
        out.append(i)
        pool.remove(i)
    return sorted(out)


def bulyan_combine(vecs: np.ndarray, f: int) -> np.ndarray:
    """Per coordinate: mean of the β = θ - 2f values closest to the median of the θ rows."""
    med = np.median(vecs, axis=0)
    beta = max(1, len(vecs) - 2 * f)
    idx = np.argsort(np.abs(vecs - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(vecs, idx, axis=0).mean(0)


def distance_based(glob, updates, name: str, f: int, select: int | None = None) -> DefenseResult:
    """Krum, MultiKrum (select m, default n - f) and Bulyan (n >= 4f + 3, else the
    coordinate-wise median, reported). One key set: Flower's functions on the concatenated
    deltas (the selection is logged from the same formula); several: per key over holders."""
    deltas = deltas_of(glob, updates)
    w = {u.cid: u.weight for u in updates}
    cids = list(deltas)
    n = len(cids)
    hold = _holders(deltas)
    report: dict = {"defense": name, "f": f}
    if name == "bulyan" and n < 4 * f + 3:
        res = median(glob, updates)
        res.report.update(defense=name, f=f,
                          fallback=f"bulyan needs n >= 4f + 3 = {4 * f + 3}, got {n}: median")  # fmt: skip
        return res
    m = 1 if name == "krum" else (select or max(1, n - f))
    arrays = {k: v.copy() for k, v in glob.items()}
    counts = {k: 0 for k in glob}
    chosen_any: dict[int, int] = {c: 0 for c in cids}
    if homogeneous(updates) and updates:
        fa = _flwr_agg()
        keys = sorted(deltas[cids[0]])
        res = [([deltas[c][k] for k in keys], int(w[c])) for c in cids]
        vecs = np.stack([_flat(deltas[c], keys) for c in cids])
        if name == "bulyan":
            agg = fa.aggregate_bulyan(list(res), f, fa.aggregate_krum, to_keep=0)
            sel = bulyan_select(vecs, f)
        else:
            agg = fa.aggregate_krum(res, f, 0 if name == "krum" else m)
            sel = krum_select(vecs, f, m)
        for k, v in zip(keys, agg, strict=True):
            arrays[k] = (glob[k].astype(np.float64) + v).astype(glob[k].dtype)
            counts[k] = len(sel)
        kept_ids = [cids[i] for i in sel]
        report["impl"] = "flwr"
        for c in kept_ids:
            chosen_any[c] = 1
        flagged = [c for c in cids if c not in kept_ids]
    else:
        report["impl"] = "per-key (romsim)"
        decided = {c: 0 for c in cids}
        for k, hs in hold.items():
            vecs = np.stack([deltas[c][k].ravel() for c in hs])
            if name == "bulyan":
                if len(hs) < 4 * f + 3:
                    v, sel = np.median(vecs, axis=0), list(range(len(hs)))
                else:
                    sel = bulyan_select(vecs, f)
                    v = bulyan_combine(vecs[sel], f)
            else:
                mk = 1 if name == "krum" else min(len(hs), select or max(1, len(hs) - f))
                sel = krum_select(vecs, f, mk)
                ws = np.array([w[hs[i]] for i in sel])
                v = (vecs[sel] * ws[:, None]).sum(0) / ws.sum()
            arrays[k] = (glob[k].astype(np.float64) + v.reshape(glob[k].shape)).astype(
                glob[k].dtype
            )
            counts[k] = len(sel)
            for c in hs:
                decided[c] += 1
            for i in sel:
                chosen_any[hs[i]] += 1
        kept_ids = [c for c in cids if chosen_any[c]]
        flagged = [c for c in cids if chosen_any[c] * 2 < decided[c]]
    report["kept"] = sorted(kept_ids)
    report["flagged"] = sorted(flagged)
    report["why"] = {str(c): f"not selected by {name}" for c in flagged}
    kept = [u for u in updates if u.cid in kept_ids]
    return DefenseResult(arrays, counts, kept, sorted(flagged), report)


# ------------------------------------------------------------------------------ dispatcher
def defend(cfg, glob, updates: list[ClientUpdate], n_attackers: int,
           last_update: Delta | None = None,
           unlearn: Callable[[dict[str, np.ndarray]], float] | None = None) -> DefenseResult:  # fmt: skip
    """Run the defense ``cfg.defense`` (a :class:`romsim.fl.config.StrategySection`)."""
    t0 = time.perf_counter()
    name = cfg.defense
    if name == "lasa":
        res = lasa(glob, updates, cfg.lasa_sparsity, cfg.lasa_lambda_n, cfg.lasa_lambda_s,
                   cfg.clip_scope, cfg.min_holders)  # fmt: skip
    elif name == "alignins":
        ref = last_update if cfg.alignins_reference == "last_update" and last_update else None
        res = alignins(glob, updates, ref, cfg.alignins_sparsity, cfg.alignins_lambda_s,
                       cfg.alignins_lambda_c, cfg.clip_scope, cfg.min_holders)  # fmt: skip
    elif name == "masa":
        if unlearn is None:
            raise ValueError("masa needs the server-side unlearning step")
        res = masa(glob, updates, unlearn, cfg.masa_lambda, cfg.masa_delta)
    elif name == "median":
        res = median(glob, updates)
    elif name == "trimmed":
        res = trimmed(glob, updates, cfg.trim_beta)
    elif name in ("krum", "multikrum", "bulyan"):
        f = cfg.byzantine_f if cfg.byzantine_f is not None else n_attackers
        res = distance_based(glob, updates, name, f, cfg.multikrum_select)
    else:  # pragma: no cover - validated by the config
        raise ValueError(name)
    res.report["seconds"] = time.perf_counter() - t0
    return res


def detection(flagged: list[int], attackers: list[int], cids: list[int]) -> dict[str, float]:
    """Precision and recall of the flagged set against the true attackers of the round (NaN:
    undefined -- nobody flagged, or no attacker)."""
    fl, at = set(flagged), set(attackers) & set(cids)
    tp = len(fl & at)
    return {
        "precision": tp / len(fl) if fl else float("nan"),
        "recall": tp / len(at) if at else float("nan"),
    }
