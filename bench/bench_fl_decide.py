"""Comparisons that can decide (issue 12, point 5): every contrast over several seeds, with a
mean ± 95 % t-interval over seeds and paired tests on the same held-out items.

- ``a``: allocation. Fed-HeLLo (GD-HLA, RGD-HLA, FIM-HLA) and Fed-piLot against random
  allocation (FedRA) and homogeneous LoRA (FedAvg), IID and Dirichlet(0.5).
- ``b``: defenses × attacks with 20 % attackers, IID and Dirichlet: main accuracy (and its
  difference from the clean run), backdoor success, detection precision/recall, device energy,
  and whether the goal holds (within 2 points of the clean run, backdoor success < 5 %).
- ``c``: TraMark. Traceability and main-task cost, against the same run without TraMark.

Every run is a full ``romsim fl run`` (``romsim.fl.runner.run_fl``). Finished run folders are
reused and interrupted ones resumed, so the command can be stopped and started again. A run
folder is named by everything that varies (seed, partition, strategy, attack, defense,
TraMark), so a run that two questions need is run once (FedAvg's clean run is question a's
homogeneous baseline, question b's clean reference and question c's TraMark-off run).

Held-out items. Each round the runner scores ``eval_examples`` items (the learning curve).
The decision uses a larger set: after the runs, every final global adapter is re-scored once
on ``final_items`` held-out items (the first ``eval_examples`` items, then the items after
FIM-HLA's Fisher set). Runs with the same seed share these items, so differences are tested
item by item (exact McNemar, per seed and pooled over seeds) and as a paired t over seeds.
The re-score of the first ``eval_examples`` items is checked against the runner's logged
accuracy (and backdoor success).

    python bench/bench_fl_decide.py --estimate                       # runs and time, no runs
    python bench/bench_fl_decide.py --question all --scale full --seeds 0,1,2
    python bench/bench_fl_decide.py --question b --scale ci --seeds 0   # check the harness
    python bench/bench_fl_decide.py --tables-only --scale full     # JSON + docs from the folders

Writes bench/results/fl_decide_{a,b,c}.json (``_ci`` appended at ``--scale ci``) and, at
``--scale full`` (or with ``--fill-docs``), the tables between the ``fl-decide-*`` markers in
docs/federated.md (a) and docs/robust.md (b, c).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fl_compare import mcnemar_p, summarize  # noqa: E402

# ------------------------------------------------------------------------------ sizing
_FULL_DEVICES = [  # fl-default.toml's three classes, 5 clients (20 % attackers = 1 client)
    {"name": "roma-full", "chip": "roma-3b-w4", "count": 1},
    {"name": "roma-mid", "chip": "roma-3b-w4", "count": 2,
     "overrides": {"mesh.rows": 9, "mesh.cols": 8, "tech.clock_hz": 4e8,
                   "sram.lora_kv_bytes": 25165824, "sram.act_bytes": 8388608}},
    {"name": "roma-lite", "chip": "roma-3b-w4", "count": 2,
     "overrides": {"mesh.rows": 5, "mesh.cols": 4, "tech.clock_hz": 2e8,
                   "sram.lora_kv_bytes": 8388608, "sram.act_bytes": 4194304},
     "link": {"uplink_bps": 5e6, "downlink_bps": 2e7, "latency_s": 0.1}},
]  # fmt: skip

SIZING = {
    # the tiny random model and synthetic data (configs/fl-robust-ci.toml, 5 clients): checks
    # the harness in seconds per run; decides nothing
    "ci": {
        "config": "configs/fl-robust-ci.toml",
        "devices": None,  # the config's: 1 big + 4 small
        "rounds": 3,
        "steps": 4,
        "n_train": 80,
        "eval_examples": 16,
        "fim_samples": 8,
        "final_items": 64,
        "tramark": {
            "watermark_fraction": 0.01,
            "trigger_set_size": 16,
            "inject_steps": 40,
            "inject_lr": 5e-2,
            "inject_batch": 8,
            "warmup_rounds": 1,
        },  # fmt: skip
    },
    # SmolLM2-135M Q4_1, WordNet categories (configs/fl-default.toml), sized for the 90-minute
    # budget on an idle 2-core machine (see --estimate and docs/federated.md, "Decisive runs")
    "full": {
        "config": "configs/fl-default.toml",
        "devices": _FULL_DEVICES,
        "rounds": 2,
        "steps": 5,
        "n_train": 1200,
        "eval_examples": 8,
        "fim_samples": 16,
        "final_items": 90,
        "tramark": {
            "watermark_fraction": 0.01,
            "trigger_set_size": 4,
            "inject_steps": 10,
            "inject_lr": 1e-2,
            "inject_batch": 8,
            "warmup_rounds": 1,
        },  # fmt: skip
    },
}

# Host-time model of one run (seconds). full: from docs/federated.md's default run, 6 min on
# the idle 2-core machine for 4 rounds x 8 clients x 6 steps with 5 x 160 scored items, split
# with a local step (forward + backward, batch 4) ~ 3 scored items (4 options, forward):
# 360 s = 20 s + 1376 x 0.25 s. ci: measured here (tiny model). A finished run's measured wall
# time rescales the model (--estimate prints both).
COST = {
    "full": {"startup_s": 20.0, "item_s": 0.25, "step_s": 0.75},
    "ci": {"startup_s": 18.0, "item_s": 0.004, "step_s": 0.02},
}

ATTACKS = {  # 20 % attackers (fraction 0.2 of 5 clients: one, drawn per seed)
    "backdoor": {"kind": "backdoor", "fraction": 0.2, "poison_fraction": 0.5, "scale": "n/eta"},
    "lie": {"kind": "lie", "fraction": 0.2},
    "minmax": {"kind": "minmax", "fraction": 0.2},
    "signflip": {"kind": "signflip", "fraction": 0.2},
    "gaussian": {"kind": "gaussian", "fraction": 0.2},
}
DEFENSES = ("none", "lasa", "alignins", "masa", "median", "trimmed", "krum", "multikrum",
            "bulyan")  # fmt: skip
A_METHODS = {  # label -> (strategy, pattern); Fed-HeLLo's official prior is the bottleneck
    "FedAvg (homogeneous)": ("fedavg", "uniform"),
    "FedRA (random)": ("fedra", "uniform"),
    "GD-HLA bottleneck": ("gd-hla", "bottleneck"),
    "RGD-HLA bottleneck": ("rgd-hla", "bottleneck"),
    "FIM-HLA bottleneck": ("fim-hla", "bottleneck"),
    "Fed-piLot": ("fed-pilot", "triangle"),
    "GD-HLA triangle": ("gd-hla", "triangle"),
}
A_REFS = (("FedRA (random)", "FedRA"), ("FedAvg (homogeneous)", "FedAvg"))
GRIDS = {
    # fits the 90-minute budget at --scale full with 3 seeds (--estimate)
    "small": {"a_methods": ("FedAvg (homogeneous)", "FedRA (random)", "FIM-HLA bottleneck",
                            "Fed-piLot"),
              "a_partitions": ("iid", "dirichlet"),
              "b_attacks": ("backdoor",), "b_defenses": ("none", "alignins", "multikrum"),
              "b_partitions": ("iid", "dirichlet"),
              "c_partitions": ("iid",)},
    # the whole question (several hours at --scale full)
    "complete": {"a_methods": tuple(A_METHODS),
                 "a_partitions": ("iid", "dirichlet"),
                 "b_attacks": ("backdoor", "lie", "minmax", "signflip"), "b_defenses": DEFENSES,
                 "b_partitions": ("iid", "dirichlet"),
                 "c_partitions": ("iid", "dirichlet")},
}  # fmt: skip
BASE_STRATEGY = ("fedavg", "uniform")  # b and c: every client holds the same keys


# ------------------------------------------------------------------------------ statistics
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}  # fmt: skip


def t_quantile(df: int) -> float:
    """Two-sided 95 % Student-t quantile (t_{0.975, df})."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover
        return _T975.get(df, 1.96 + 2.4 / df)


def _finite(xs) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def mean_ci(xs) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % t-interval and n over the finite values of ``xs``
    (half-width NaN for one value, mean NaN for none)."""
    v = _finite(xs)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(v) / n
    if n < 2:
        return m, float("nan"), 1
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    return m, t_quantile(n - 1) * sd / math.sqrt(n), n


def paired_t(a: list[float], b: list[float]) -> dict:
    """Paired t over seeds of ``a[i] - b[i]``: mean difference, 95 % half-width, two-sided p."""
    d = [x - y for x, y in zip(a, b, strict=True)
         if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]  # fmt: skip
    m, half, n = mean_ci(d)
    p = float("nan")
    if n >= 2:
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
        if sd == 0:
            p = 1.0 if m == 0 else 0.0
        else:
            from scipy.stats import t

            p = float(2 * t.sf(abs(m) / (sd / math.sqrt(n)), n - 1))
    return {"diff": m, "half": half, "n": n, "p": p}


def discordant(mine: str, ref: str) -> tuple[int, int]:
    """Items only ``mine`` got right and items only ``ref`` got right (``"0101..."`` bits)."""
    if len(mine) != len(ref):
        raise ValueError(f"paired item sets differ in size ({len(mine)} vs {len(ref)})")
    b = sum(1 for x, y in zip(mine, ref, strict=True) if x == "1" and y == "0")
    c = sum(1 for x, y in zip(mine, ref, strict=True) if x == "0" and y == "1")
    return b, c


def pooled_mcnemar(pairs: list[tuple[str, str]]) -> dict:
    """Exact McNemar per seed and pooled over seeds (the discordant counts summed: items of
    different seeds are different items)."""
    per = [discordant(m, r) for m, r in pairs]
    b, c = sum(x for x, _ in per), sum(y for _, y in per)
    return {"b": b, "c": c, "p": mcnemar_p(b, c), "per_seed": [[x, y, mcnemar_p(x, y)]
                                                              for x, y in per]}  # fmt: skip


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact 95 % binomial interval of k successes in n."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def binom_half(n: int, p: float = 0.5) -> float:
    """Half-width of the 95 % normal binomial interval (worst case p = 0.5)."""
    return 1.96 * math.sqrt(p * (1 - p) / n) if n else float("nan")


def goal_verdict(delta: dict, bsr_hi: float | None, bsr_lo: float | None,
                 tol: float = 0.02, bsr_max: float = 0.05) -> str:  # fmt: skip
    """Goal: main accuracy within ``tol`` of the clean run, backdoor success below ``bsr_max``.
    ``delta``: paired_t of (run - clean); ``bsr_*``: the interval of the backdoor success in
    excess of the clean run's model on the same triggered items (the raw rate's when there is no
    clean control; None: no backdoor). "met"/"missed" only when the intervals decide, else
    "undecided"."""
    lo, hi = delta["diff"] - delta["half"], delta["diff"] + delta["half"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undecided"
    if hi < -tol or (bsr_lo is not None and bsr_lo >= bsr_max):
        return "missed"
    if lo > -tol and (bsr_hi is None or bsr_hi < bsr_max):
        return "met"
    return "undecided"


# ------------------------------------------------------------------------------ formatting
def fmt_ci(m: float, half: float, digits: int = 3) -> str:
    if not math.isfinite(m):
        return "–"
    if not math.isfinite(half):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {half:.{digits}f}"


def fmt_diff(d: dict, scale: float = 100.0) -> str:
    """A paired difference in points: "+1.3 ± 2.0 (p 0.21)"."""
    if not math.isfinite(d["diff"]):
        return "–"
    s = f"{d['diff'] * scale:+.1f}"
    if math.isfinite(d["half"]):
        s += f" ± {d['half'] * scale:.1f}"
    if math.isfinite(d["p"]):
        s += f" (p {d['p']:.2f})"
    return s


def fmt_mcnemar(mc: dict | None) -> str:
    if not mc:
        return "–"
    return f"+{mc['b']} / −{mc['c']}, p {mc['p']:.2f}"


# ------------------------------------------------------------------------------ the plan
def spec(partition: str, strategy: str, pattern: str, attack: str = "none",
         defense: str = "none", tramark: bool = False) -> dict:  # fmt: skip
    return {"partition": partition, "strategy": strategy, "pattern": pattern, "attack": attack,
            "defense": defense, "tramark": tramark}  # fmt: skip


def run_key(s: dict, seed: int) -> str:
    return (f"s{seed}-{s['partition']}-{s['strategy']}-{s['pattern']}-{s['attack']}-"
            f"{s['defense']}" + ("-tramark" if s["tramark"] else ""))  # fmt: skip


def plan(question: str, grid: dict) -> list[dict]:
    """The run specs question ``question`` needs (its references included)."""
    st, pat = BASE_STRATEGY
    if question == "a":
        return [spec(p, *A_METHODS[m]) for p in grid["a_partitions"]
                for m in dict.fromkeys((*grid["a_methods"], *(r for r, _ in A_REFS)))]  # fmt: skip
    if question == "b":
        out = []
        for p in grid["b_partitions"]:
            out.append(spec(p, st, pat))  # the clean run
            out += [spec(p, st, pat, a, d) for a in grid["b_attacks"] for d in grid["b_defenses"]]
        return out
    if question == "c":
        return [spec(p, st, pat, tramark=t) for p in grid["c_partitions"] for t in (False, True)]
    raise ValueError(question)


def base_dict(scale: str) -> dict:
    from romsim.fl.config import load_fl_config

    sz = SIZING[scale]
    d = load_fl_config(ROOT / sz["config"]).to_dict()
    d["attackers"], d["faults"] = [], []
    if sz["devices"] is not None:
        d["devices"] = json.loads(json.dumps(sz["devices"]))
    d["run"]["rounds"] = sz["rounds"]
    d["train"]["local_steps"] = sz["steps"]
    d["data"].update(n_train=sz["n_train"], eval_examples=sz["eval_examples"],
                     n_test=sz["final_items"] + sz["fim_samples"], alpha=0.5)  # fmt: skip
    # FIM-HLA: Fisher refresh from round 2 on (the published 50-round prior is longer than
    # these runs); the set is test items eval_examples .. + fim_samples - 1, never re-scored
    d["strategy"].update(defense="none", fim_mode="server", fim_samples=sz["fim_samples"],
                         fim_prior_rounds=1, fim_every=1)  # fmt: skip
    d["tramark"] = {**d["tramark"], **sz["tramark"], "enabled": False}
    return d


def make_config(scale: str, s: dict, seed: int, out: Path, base: dict | None = None):
    from romsim.fl.config import fl_config_from_dict

    d = json.loads(json.dumps(base or base_dict(scale)))
    d["run"].update(name=run_key(s, seed), seed=seed, out=str(out))
    d["data"].update(partition=s["partition"], seed=seed)
    d["strategy"].update(name=s["strategy"], pattern=s["pattern"], defense=s["defense"])
    d["attackers"] = [] if s["attack"] == "none" else [dict(ATTACKS[s["attack"]])]
    d["tramark"].update(enabled=s["tramark"], seed=seed)
    return fl_config_from_dict(d, source=run_key(s, seed))


def final_item_indices(sz: dict) -> list[int]:
    """Indices into the test split re-scored at the end: the per-round items, then the items
    after FIM-HLA's Fisher set (the same for every strategy, so every run shares them)."""
    e, f, n = sz["eval_examples"], sz["fim_samples"], sz["final_items"]
    return list(range(e)) + list(range(e + f, e + f + n - e))


def layout_id(sz: dict, data_seed: int) -> str:
    return f"E{sz['eval_examples']}-F{sz['fim_samples']}-N{sz['final_items']}-d{data_seed}"


# ------------------------------------------------------------------------------ cost model
def run_cost(scale: str, s: dict, sz: dict | None = None, cost: dict | None = None) -> float:
    """Estimated host seconds of one run plus its final re-score (see COST)."""
    sz = sz or SIZING[scale]
    c = cost or COST[scale]
    n = 5 if sz["devices"] is None else sum(d["count"] for d in sz["devices"])
    r, e = sz["rounds"], sz["eval_examples"]
    items_per_eval = e * (1.9 if s["attack"] == "backdoor" else 1.0)  # + triggered items
    t = c["startup_s"] + (r + 1) * items_per_eval * c["item_s"]
    t += r * n * sz["steps"] * c["step_s"]
    if s["strategy"] in ("fed-pilot", "fim-hla"):  # the clients' probe batch
        t += r * n * c["step_s"]
    if s["strategy"] == "fim-hla":  # server Fisher refreshes, one backward per item
        t += (r - 1) * sz["fim_samples"] * c["step_s"] / 2
    if s["defense"] == "masa":  # 5 epochs of unlearning per client on >= 8 aux items
        aux = max(8, round(0.01 * sz["n_train"]))
        t += r * n * 5 * math.ceil(aux / 64) * (aux / 4) * c["step_s"]
    if s["tramark"]:
        tm = sz["tramark"]
        wr = r - tm["warmup_rounds"] + 1  # the split follows the warm-up's aggregation
        # an injection step at batch 8 ~ 1.13 local steps (SmolLM2: 40 steps in 34 s)
        t += wr * n * tm["inject_steps"] * (tm["inject_batch"] / 8) * 1.13 * c["step_s"]
        t += wr * (n + 1) * n * tm["trigger_set_size"] * c["item_s"]  # every model x triggers
        t += wr * n * e * c["item_s"]  # the personalized models on the eval items
    return t + rescore_cost(scale, s, sz, cost)


def rescore_cost(scale: str, s: dict, sz: dict | None = None, cost: dict | None = None) -> float:
    """Estimated host seconds of a run's final re-score (Rescorer.items_for)."""
    sz = sz or SIZING[scale]
    c = cost or COST[scale]
    n = 5 if sz["devices"] is None else sum(d["count"] for d in sz["devices"])
    t = sz["final_items"] * c["item_s"] * (1.9 if s["attack"] == "backdoor" else 1.0)
    if s["tramark"]:  # every client's personalized adapter
        t += n * sz["final_items"] * c["item_s"]
    return t


# ------------------------------------------------------------------------------ running
def _env() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def is_done(out: Path, rounds: int, tramark: bool) -> bool:
    mpath = out / "metrics.json"
    if not (mpath.is_file() and (out / "adapter" / "adapter_config.json").is_file()):
        return False
    try:
        rows = json.loads(mpath.read_text())["rounds"]
    except (ValueError, KeyError):
        return False
    return len(rows) == rounds + 1 and (not tramark or (out / "tramark").is_dir())


def check_same_config(out: Path, cfg) -> None:
    """A folder made by another sizing must not be reused silently."""
    from romsim.fl.config import fl_config_from_dict

    p = out / "config.json"
    if not p.is_file():
        return
    old = fl_config_from_dict(json.loads(p.read_text())).to_dict()
    new = cfg.to_dict()
    if old != new:
        diff = sorted(k for k in new if old.get(k) != new[k])
        raise SystemExit(f"{out} was made with another configuration (sections {diff} differ): "
                         "use another --out or remove the folder")  # fmt: skip


def ensure_run(scale: str, s: dict, seed: int, out_root: Path, base: dict,
               stop_after: int | None = None) -> bool:  # fmt: skip
    """Run (or resume, or reuse) one run; True when it is finished."""
    from romsim.fl.runner import run_fl

    out = out_root / run_key(s, seed)
    cfg = make_config(scale, s, seed, out, base)
    check_same_config(out, cfg)
    if is_done(out, cfg.run.rounds, s["tramark"]):
        return True
    resume = (out / "checkpoint" / "state.json").is_file()
    if out.exists() and not resume and any((out / n).exists()
                                           for n in ("metrics.json", "metrics.csv", "adapter")):  # fmt: skip
        stale = out.with_name(out.name + ".stale")  # outputs but no checkpoint: start over
        shutil.rmtree(stale, ignore_errors=True)
        out.rename(stale)
    print(f"{'resume' if resume else 'run'} {out.name}", flush=True)
    t0 = time.time()
    try:
        run_fl(cfg, out=str(out), resume=resume, progress=False, stop_after=stop_after)
    finally:  # the wall time of every attempt, interrupted ones included
        wp = out / "decide_wall.json"
        prev = json.loads(wp.read_text())["wall_s"] if wp.is_file() else 0.0
        if out.is_dir():
            wp.write_text(json.dumps({"wall_s": prev + time.time() - t0}))
    return is_done(out, cfg.run.rounds, s["tramark"])


class Rescorer:
    """Re-scores final global adapters on the final items (one model load for all runs)."""

    def __init__(self):
        self.bundle = None
        self.data: dict = {}

    def items_for(self, out: Path, scale: str) -> dict:
        """``out``'s item bits (cached in ``out/decide_items.json``)."""
        import numpy as np

        from romsim.fl.config import fl_config_from_dict

        sz = SIZING[scale]
        cfg = fl_config_from_dict(json.loads((out / "config.json").read_text()))
        lay = layout_id(sz, cfg.data.seed)
        cache = out / "decide_items.json"
        if cache.is_file():
            got = json.loads(cache.read_text())
            if got.get("layout") == lay and (not cfg.tramark.enabled or "personalized" in got) \
                    and (cfg.attackers or "backdoor_clean" in got):  # fmt: skip
                return got
        from romsim.fl import train as T
        from romsim.fl.data import load_dataset

        try:  # after the runner split
            from romsim.fl.checkpoint import read_checkpoint
        except ImportError:  # pragma: no cover
            from romsim.fl.runner import read_checkpoint
        if self.bundle is None:
            self.bundle = T.load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self.data:
            self.data = {key: load_dataset(cfg.data)}  # one seed's data at a time
        ds = self.data[key]
        items = [ds.test[i] for i in final_item_indices(sz)]
        T.set_adapter(self.bundle, read_checkpoint(out / "checkpoint")[1])
        ok = T.predict(self.bundle, items, cfg.train.eval_batch) == np.array(
            [e.label for e in items])  # fmt: skip
        rows = json.loads((out / "metrics.json").read_text())["rounds"]
        e = cfg.data.eval_examples
        res = {"layout": lay, "n": len(items), "correct": "".join("1" if x else "0" for x in ok),
               "checks": {"logged_accuracy": rows[-1]["accuracy"],
                          "rescored_prefix": float(ok[:e].mean())}}  # fmt: skip
        bd = next((a for a in cfg.attackers if a.kind == "backdoor"), None)
        if bd is not None:
            from romsim.fl.attacks import auto_target, backdoor_control_set, backdoor_test_set
            from romsim.fl.data import server_holdout

            target = bd.target or auto_target(server_holdout(ds.train, cfg.masa_aux_count())[0])
            trig = backdoor_test_set(items, bd.trigger, target, bd.trigger_position, cfg.run.seed)
            hit = T.predict(self.bundle, trig, cfg.train.eval_batch) == np.array(
                [x.label for x in trig])  # fmt: skip
            # the same items and options without the trigger: how often the target wins anyway
            ctrl = backdoor_control_set(items, target)
            base = T.predict(self.bundle, ctrl, cfg.train.eval_batch) == np.array(
                [x.label for x in ctrl])  # fmt: skip
            m = sum(1 for x in items[:e] if x.answer != target)
            res.update(backdoor="".join("1" if x else "0" for x in hit), backdoor_target=target,
                       backdoor_untriggered="".join("1" if x else "0" for x in base))  # fmt: skip
            res["checks"].update(logged_backdoor=rows[-1]["backdoor_success"],
                                 rescored_backdoor_prefix=float(hit[:m].mean()) if m else None)  # fmt: skip
        if not cfg.attackers:  # the clean model on (b)'s triggered items: the attack's baseline
            from romsim.fl.attacks import auto_target, backdoor_test_set
            from romsim.fl.config import AttackerSection
            from romsim.fl.data import server_holdout

            spec = {k: v for k, v in ATTACKS["backdoor"].items() if k != "scale"}
            bd0 = AttackerSection.model_validate(spec)
            tgt = bd0.target or auto_target(server_holdout(ds.train, cfg.masa_aux_count())[0])
            trig = backdoor_test_set(items, bd0.trigger, tgt, bd0.trigger_position, cfg.run.seed)
            hit = T.predict(self.bundle, trig, cfg.train.eval_batch) == np.array(
                [x.label for x in trig])  # fmt: skip
            res.update(backdoor_clean="".join("1" if x else "0" for x in hit),
                       backdoor_clean_target=tgt)  # fmt: skip
        if cfg.tramark.enabled:  # every client's personalized adapter on the same items
            from romsim.fl.tramark import load_peft_arrays

            pers = []
            for c in range(cfg.n_clients):
                arrs = load_peft_arrays(out / "tramark" / f"client-{c:02d}", self.bundle, cfg.lora)
                T.set_adapter(self.bundle, arrs)
                hit = T.predict(self.bundle, items, cfg.train.eval_batch) == np.array(
                    [x.label for x in items])  # fmt: skip
                pers.append("".join("1" if x else "0" for x in hit))
            res["personalized"] = pers
            res["checks"].update(logged_wm_main_acc=rows[-1].get("wm_main_acc"),
                                 rescored_wm_prefix=sum(b[:e].count("1") for b in pers)
                                 / (e * len(pers)))  # fmt: skip
        ch = res["checks"]
        bad = abs(ch["logged_accuracy"] - ch["rescored_prefix"]) > 1e-9 or (
            ch.get("logged_backdoor") is not None and ch.get("rescored_backdoor_prefix") is not None
            and abs(ch["logged_backdoor"] - ch["rescored_backdoor_prefix"]) > 1e-9) or (
            ch.get("logged_wm_main_acc") is not None
            and abs(ch["logged_wm_main_acc"] - ch["rescored_wm_prefix"]) > 1e-9)  # fmt: skip
        if bad:  # same bits, batches and items as the run's own evaluation: should not happen
            print(f"WARNING {out.name}: re-scored prefix {ch} differs from the logged values")
        cache.write_text(json.dumps(res))
        return res


def record(out: Path, s: dict, seed: int, items: dict | None) -> dict:
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    wp = out / "decide_wall.json"
    return {"key": out.name, "seed": seed, **s, "rounds": rows,
            "wall_s": json.loads(wp.read_text())["wall_s"] if wp.is_file() else None,
            "items": items}  # fmt: skip


# ------------------------------------------------------------------------------ tables
def _acc(r: dict) -> float:
    """Final accuracy on the final items (re-scored), else the logged last-round accuracy."""
    it = r.get("items")
    if it and it.get("correct"):
        return it["correct"].count("1") / len(it["correct"])
    return r["rounds"][-1]["accuracy"]


def _mean_rounds(r: dict, field: str) -> float:
    v = _finite(x.get(field) for x in r["rounds"][1:])
    return sum(v) / len(v) if v else float("nan")


def _by(records: list[dict]) -> dict:
    return {(r["partition"], r["strategy"], r["pattern"], r["attack"], r["defense"],
             r["tramark"], r["seed"]): r for r in records}  # fmt: skip


def _skey(s: dict) -> tuple:
    return (s["partition"], s["strategy"], s["pattern"], s["attack"], s["defense"], s["tramark"])


def compare(runs: list[dict], refs: list[dict]) -> dict:
    """Paired t over the seeds both have, and McNemar on their shared items."""
    ref_by = {r["seed"]: r for r in refs}
    both = [(r, ref_by[r["seed"]]) for r in runs if r["seed"] in ref_by]
    pt = paired_t([_acc(a) for a, _ in both], [_acc(b) for _, b in both])
    pairs = [(a["items"]["correct"], b["items"]["correct"]) for a, b in both
             if a.get("items") and b.get("items")
             and a["items"]["layout"] == b["items"]["layout"]]  # fmt: skip
    return {"t": pt, "mcnemar": pooled_mcnemar(pairs) if pairs else None}


def _group(records: list[dict], s: dict) -> list[dict]:
    k = _skey(s)
    return sorted((r for r in records if _skey(r) == k), key=lambda r: r["seed"])


def table_a(records: list[dict], grid: dict) -> tuple[str, list[dict]]:
    lines = [
        "| partition | method | seeds | accuracy (95 % CI) | vs FedRA: Δ points (paired t) "
        "| vs FedRA: McNemar +/−, p | vs FedAvg: Δ points | vs FedAvg: McNemar | device energy (J) "
        "| uplink (MB) | layers/client |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats = []
    for p in grid["a_partitions"]:
        for m in dict.fromkeys((*(r for r, _ in A_REFS), *grid["a_methods"])):
            rs = _group(records, spec(p, *A_METHODS[m]))
            if not rs:
                continue
            acc = mean_ci([_acc(r) for r in rs])
            sm = [summarize(r["rounds"]) for r in rs]
            e = mean_ci([x["energy_j"] for x in sm])
            up = mean_ci([x["bytes_up"] / 1e6 for x in sm])
            lay = mean_ci([x["trained_layers_mean"] for x in sm])
            row = {"partition": p, "method": m, "seeds": [r["seed"] for r in rs],
                   "accuracy": acc, "energy_j": e, "uplink_mb": up, "layers": lay}  # fmt: skip
            cells = []
            for ref, short in A_REFS:
                if ref == m:
                    cells += ["–", "–"]
                    continue
                cmp = compare(rs, _group(records, spec(p, *A_METHODS[ref])))
                row[f"vs_{short}"] = cmp
                cells += [fmt_diff(cmp["t"]), fmt_mcnemar(cmp["mcnemar"])]
            stats.append(row)
            lines.append(f"| {p} | {m} | {len(rs)} | {fmt_ci(acc[0], acc[1])} | "
                         + " | ".join(cells)
                         + f" | {fmt_ci(e[0], e[1], 2)} | {up[0]:.1f} | {lay[0]:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n", stats


def _paired_mean(d: list[int]) -> tuple[float, float]:
    """Mean and 95 % normal half-width of paired item differences in {-1, 0, 1}."""
    if len(d) < 2:
        return float("nan"), float("nan")
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    return m, 1.96 * sd / math.sqrt(len(d))


def _bsr(rs: list[dict], clean: list[dict] | None = None) -> dict | None:
    """Backdoor success over seeds (mean ± t) and pooled over items (Clopper-Pearson); the
    untriggered control (same items and options, no trigger) and, with ``clean``, the success
    in excess of the clean run's model on the same triggered items, paired item by item."""
    bits = [r["items"]["backdoor"] for r in rs if r.get("items") and r["items"].get("backdoor")]
    per = [b.count("1") / len(b) if b else float("nan") for b in bits]
    if not per:
        per = _finite(r["rounds"][-1].get("backdoor_success") for r in rs)
        if not per:
            return None
    k, n = sum(b.count("1") for b in bits), sum(len(b) for b in bits)
    lo, hi = clopper_pearson(k, n) if n else (float("nan"), float("nan"))
    m, half, ns = mean_ci(per)
    # the trigger's effect: with minus without the trigger, item by item
    pairs = [(r["items"]["backdoor"], r["items"].get("backdoor_untriggered"))
             for r in rs if r.get("items") and r["items"].get("backdoor")]  # fmt: skip
    pairs = [(a, b) for a, b in pairs if b and len(b) == len(a)]
    k0, n0 = sum(b.count("1") for _, b in pairs), sum(len(b) for _, b in pairs)
    net, net_half = _paired_mean(
        [int(x) - int(y) for a, b in pairs for x, y in zip(a, b, strict=True)]
    )
    # the excess over the clean run of the same seed (its model on the same triggered items)
    by_seed = {c["seed"]: c.get("items") or {} for c in clean or []}
    d_ex, kc, nc = [], 0, 0
    for r in rs:
        it, c = r.get("items") or {}, by_seed.get(r["seed"], {})
        a, b = it.get("backdoor"), c.get("backdoor_clean")
        if a and b and len(a) == len(b) and it.get("backdoor_target") == c.get(
                "backdoor_clean_target"):  # fmt: skip
            d_ex += [int(x) - int(y) for x, y in zip(a, b, strict=True)]
            kc, nc = kc + b.count("1"), nc + len(b)
    ex, ex_half = _paired_mean(d_ex)
    return {"mean": m, "half": half, "n_seeds": ns, "k": k, "n": n, "cp_lo": lo, "cp_hi": hi,
            "untriggered_k": k0, "untriggered_n": n0, "net": net, "net_half": net_half,
            "clean_k": kc, "clean_n": nc, "excess": ex, "excess_half": ex_half}  # fmt: skip


def table_b(records: list[dict], grid: dict) -> tuple[str, list[dict]]:
    st, pat = BASE_STRATEGY
    lines = [
        "| partition | attack | defense | seeds | main accuracy (95 % CI) "
        "| vs clean: Δ points (paired t) | vs clean: McNemar +/−, p "
        "| target answered on triggered items: pooled k/n; clean model; excess, points; untriggered "
        "| detection precision "
        "| detection recall | device energy (J) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats = []
    for p in grid["b_partitions"]:
        clean = _group(records, spec(p, st, pat))
        combos = [("none", "none")] + [
            (a, d) for a in grid["b_attacks"] for d in grid["b_defenses"]
        ]
        for a, d in combos:
            rs = _group(records, spec(p, st, pat, a, d))
            if not rs:
                continue
            acc = mean_ci([_acc(r) for r in rs])
            e = mean_ci([r["rounds"][-1]["energy_j"] for r in rs])
            prec = mean_ci([_mean_rounds(r, "detect_precision") for r in rs])
            rec = mean_ci([_mean_rounds(r, "detect_recall") for r in rs])
            row = {"partition": p, "attack": a, "defense": d, "seeds": [r["seed"] for r in rs],
                   "accuracy": acc, "energy_j": e, "precision": prec, "recall": rec}  # fmt: skip
            if a == "none":
                lines.append(f"| {p} | clean | none | {len(rs)} | {fmt_ci(acc[0], acc[1])} | – "
                             f"| – | – | – | – | {fmt_ci(e[0], e[1], 2)} | – |")  # fmt: skip
                stats.append(row)
                continue
            cmp = compare(rs, clean)
            bsr = _bsr(rs, clean) if a == "backdoor" else None
            hi = lo = None
            bcell = "–"
            if bsr:
                if math.isfinite(bsr["excess"]):  # the goal reads the excess over clean
                    hi = bsr["excess"] + bsr["excess_half"]
                    lo = bsr["excess"] - bsr["excess_half"]
                else:  # no clean control: the raw rate's bounds
                    hi = max(x for x in (bsr["cp_hi"], bsr["mean"] + (bsr["half"]
                             if math.isfinite(bsr["half"]) else 0)) if math.isfinite(x))  # fmt: skip
                    lo = min(x for x in (bsr["cp_lo"], bsr["mean"] - (bsr["half"]
                             if math.isfinite(bsr["half"]) else 0)) if math.isfinite(x))  # fmt: skip
                bcell = f"{bsr['k']}/{bsr['n']} = {bsr['k'] / bsr['n']:.3f}" if bsr["n"] else "–"
                if bsr["clean_n"]:
                    bcell += (
                        f"; clean model {bsr['clean_k']}/{bsr['clean_n']}; **excess "
                        f"{100 * bsr['excess']:+.1f} ± {100 * bsr['excess_half']:.1f}**"
                    )
                if bsr["untriggered_n"]:
                    bcell += (f"; untriggered {bsr['untriggered_k']}/{bsr['untriggered_n']} "
                              f"(trigger effect {100 * bsr['net']:+.1f} ± "
                              f"{100 * bsr['net_half']:.1f})")  # fmt: skip
            verdict = goal_verdict(cmp["t"], hi, lo)
            row.update(vs_clean=cmp, backdoor=bsr, goal=verdict)
            stats.append(row)
            lines.append(f"| {p} | {a} | {d} | {len(rs)} | {fmt_ci(acc[0], acc[1])} "
                         f"| {fmt_diff(cmp['t'])} | {fmt_mcnemar(cmp['mcnemar'])} | {bcell} "
                         f"| {fmt_ci(prec[0], prec[1], 2)} | {fmt_ci(rec[0], rec[1], 2)} "
                         f"| {fmt_ci(e[0], e[1], 2)} | {verdict} |")  # fmt: skip
    return "\n".join(lines) + "\n", stats


def _pers_acc(r: dict) -> float:
    """Mean accuracy of the run's personalized adapters on the final items (re-scored), else
    the logged last-round mean on the eval items."""
    it = r.get("items") or {}
    bits = it.get("personalized")
    if bits:
        return sum(b.count("1") for b in bits) / sum(len(b) for b in bits)
    v = r["rounds"][-1].get("wm_main_acc")
    return float("nan") if v is None else v


def table_c(records: list[dict], grid: dict, n_clients: int) -> tuple[str, list[dict]]:
    st, pat = BASE_STRATEGY
    lines = [
        "| partition | TraMark | seeds | global accuracy (95 % CI) "
        "| global vs off: Δ points (paired t) | global vs off: McNemar +/−, p "
        "| personalized accuracy (mean of clients) | main-task cost: personalized − off, "
        "points (paired t) | traced, final round (pooled; exact lower bound) "
        "| own trigger acc. | cross-client trigger acc. | server TraMark s/round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stats = []
    for p in grid["c_partitions"]:
        off = _group(records, spec(p, st, pat))
        for tm in (False, True):
            rs = off if not tm else _group(records, spec(p, st, pat, tramark=True))
            if not rs:
                continue
            acc = mean_ci([_acc(r) for r in rs])
            row = {"partition": p, "tramark": tm, "seeds": [r["seed"] for r in rs],
                   "accuracy": acc}  # fmt: skip
            if not tm:
                stats.append(row)
                lines.append(f"| {p} | off | {len(rs)} | {fmt_ci(acc[0], acc[1])} | – | – | – "
                             "| – | – | – | – | – |")  # fmt: skip
                continue
            cmp = compare(rs, off)
            off_by = {r["seed"]: r for r in off}
            both = [r for r in rs if r["seed"] in off_by]
            pers = mean_ci([_pers_acc(r) for r in rs])
            cost = paired_t([_pers_acc(r) for r in both], [_acc(off_by[r["seed"]]) for r in both])
            last = [r["rounds"][-1] for r in rs]
            tr = _finite(x.get("trace_rate") for x in last)
            k, n = round(sum(tr) * n_clients), len(tr) * n_clients
            lo = clopper_pearson(k, n)[0] if n else float("nan")
            own = mean_ci([x.get("wm_success") for x in last])
            cross = mean_ci([x.get("wm_cross") for x in last])
            srv = mean_ci([_mean_rounds(r, "tramark_s") for r in rs])
            row.update(vs_off=cmp, personalized=pers, cost=cost, traced_k=k, traced_n=n,
                       traced_lo=lo, own=own, cross=cross, server_s=srv)  # fmt: skip
            stats.append(row)
            lines.append(f"| {p} | on | {len(rs)} | {fmt_ci(acc[0], acc[1])} "
                         f"| {fmt_diff(cmp['t'])} | {fmt_mcnemar(cmp['mcnemar'])} "
                         f"| {fmt_ci(pers[0], pers[1])} | {fmt_diff(cost)} "
                         f"| {k}/{n}, ≥ {lo:.2f} | {fmt_ci(own[0], own[1], 2)} "
                         f"| {fmt_ci(cross[0], cross[1], 2)} | {srv[0]:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n", stats


# ------------------------------------------------------------------------------ outputs
DOCS = {"a": ("docs/federated.md", "fl-decide-a"), "b": ("docs/robust.md", "fl-decide-b"),
        "c": ("docs/robust.md", "fl-decide-c")}  # fmt: skip


def sizing_note(scale: str, seeds: list[int], grid_name: str) -> str:
    sz = SIZING[scale]
    n = 5 if sz["devices"] is None else sum(d["count"] for d in sz["devices"])
    k = len(seeds)
    model = "tiny random LLaMA, synthetic data" if scale == "ci" else "SmolLM2-135M Q4_1, WordNet"
    return (
        f"Scale `{scale}` ({model}), grid `{grid_name}`, seeds {', '.join(map(str, seeds))}: "
        f"{n} clients, {sz['rounds']} rounds × {sz['steps']} local steps, "
        f"{sz['eval_examples']} items scored per round, final adapters re-scored on "
        f"{sz['final_items']} held-out items per seed (binomial 95 % half-width at 50 %: "
        f"±{100 * binom_half(sz['final_items']):.1f} points per run, "
        f"±{100 * binom_half(sz['final_items'] * k):.1f} pooled over {k} seed(s)). "
        "± = 95 % t-interval over seeds; Δ = paired over seeds; McNemar = items only this "
        "run / only the reference got right, summed over seeds, exact two-sided p."
    )


def ci_dicts(obj):
    """``obj`` with every (mean, half-width, n) triple of :func:`mean_ci` as a dict."""
    if isinstance(obj, tuple) and len(obj) == 3 and isinstance(obj[2], int):
        return {"mean": obj[0], "half": obj[1], "n": obj[2]}
    if isinstance(obj, dict):
        return {k: ci_dicts(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [ci_dicts(v) for v in obj]
    return obj


def strict_json(obj) -> str:
    from romsim import jsonout

    s = jsonout.dumps(obj, indent=1)
    json.loads(s, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    return s


def write_outputs(q: str, scale: str, seeds: list[int], grid_name: str, grid: dict,
                  records: list[dict], results_dir: Path, fill_docs: bool,
                  doc_root: Path = ROOT) -> str:  # fmt: skip
    sz = SIZING[scale]
    n = 5 if sz["devices"] is None else sum(d["count"] for d in sz["devices"])
    md, stats = {"a": lambda: table_a(records, grid), "b": lambda: table_b(records, grid),
                 "c": lambda: table_c(records, grid, n)}[q]()  # fmt: skip
    suffix = "" if scale == "full" else f"_{scale}"
    path = results_dir / f"fl_decide_{q}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    note = sizing_note(scale, seeds, grid_name)
    path.write_text(strict_json({"question": q, "scale": scale, "grid": grid_name,
                                 "seeds": seeds, "sizing": sz, "note": note, "table": md,
                                 "stats": ci_dicts(stats), "runs": records}))  # fmt: skip
    if fill_docs:
        doc, tag = DOCS[q]
        fill_doc(doc_root / doc, tag, f"\n{note}\n\n{md}\n")
    return md


def fill_doc(doc: Path, tag: str, body: str) -> None:
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    text = doc.read_text()
    i, j = text.index(start) + len(start), text.index(end)
    doc.write_text(text[:i] + body + text[j:])


# ------------------------------------------------------------------------------ estimate
def estimate(questions: list[str], scale: str, seeds: list[int], grid: dict, out_root: Path,
             budget_min: float) -> dict:  # fmt: skip
    sz = SIZING[scale]
    seen: dict[str, tuple[dict, int]] = {}
    per_q: dict[str, list[str]] = {}
    for q in questions:
        per_q[q] = []
        for seed in seeds:
            for s in plan(q, grid):
                k = run_key(s, seed)
                per_q[q].append(k)
                seen.setdefault(k, (s, seed))
    done, measured, modelled = set(), 0.0, 0.0
    for k, (s, _seed) in seen.items():
        out = out_root / k
        if is_done(out, sz["rounds"], s["tramark"]):
            done.add(k)
            wp = out / "decide_wall.json"
            if wp.is_file():
                measured += json.loads(wp.read_text())["wall_s"]
                modelled += run_cost(scale, s) - rescore_cost(scale, s)
    factor = measured / modelled if modelled else 1.0
    todo = {k: run_cost(scale, s) * factor for k, (s, _) in seen.items() if k not in done}
    tot = sum(todo.values())
    print(f"scale {scale}, seeds {seeds}, per run: {SIZING[scale]['rounds']} rounds x "
          f"{sz['steps']} steps, {sz['eval_examples']} items/round, {sz['final_items']} final "
          f"items (95 % binomial half-width ±{100 * binom_half(sz['final_items']):.1f} points "
          f"per run, ±{100 * binom_half(sz['final_items'] * len(seeds)):.1f} pooled)")  # fmt: skip
    for q, keys in per_q.items():
        u = list(dict.fromkeys(keys))
        t_q = sum(run_cost(scale, seen[k][0]) for k in u)
        print(f"  question {q}: {len(u)} runs ({sum(k in done for k in u)} finished), "
              f"{t_q / 60:.0f} min if run alone (model)")  # fmt: skip
    print(f"  all: {len(seen)} distinct runs, {len(done)} finished, {len(todo)} to run: "
          f"~{tot / 60:.0f} min" + (f" (model x {factor:.2f}, measured on {len(done)} runs)"
                                    if modelled else " (cost model, nothing measured yet)")
          + f"; budget {budget_min:.0f} min: {'fits' if tot <= budget_min * 60 else 'DOES NOT FIT'}")  # fmt: skip
    return {"runs": len(seen), "done": len(done), "todo_s": tot, "factor": factor}


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--question", default="all", choices=("a", "b", "c", "all"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scale", default="full", choices=tuple(SIZING))
    ap.add_argument("--grid", default="small", choices=tuple(GRIDS))
    ap.add_argument("--methods", help="question a: comma-separated labels (default: the grid's)")
    ap.add_argument("--attacks", help=f"question b: of {', '.join(ATTACKS)}")
    ap.add_argument("--defenses", help=f"question b: of {', '.join(DEFENSES)}")
    ap.add_argument("--partitions", help="every question: iid,dirichlet")
    ap.add_argument("--out", help="run folders (default runs/decide-SCALE)")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--estimate", action="store_true", help="print runs and time; run nothing")
    ap.add_argument("--budget-min", type=float, default=90.0)
    ap.add_argument("--tables-only", action="store_true",
                    help="re-score and tabulate the finished runs; start none")  # fmt: skip
    ap.add_argument("--fill-docs", action="store_true",
                    help="write the tables into the docs (default only at --scale full)")  # fmt: skip
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--doc-root", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # testing: simulated kill
    a = ap.parse_args(argv)
    _env()
    seeds = [int(s) for s in a.seeds.split(",")]
    questions = ["a", "b", "c"] if a.question == "all" else [a.question]
    grid = dict(GRIDS[a.grid])
    if a.methods:
        grid["a_methods"] = tuple(a.methods.split(","))
    if a.attacks:
        grid["b_attacks"] = tuple(a.attacks.split(","))
    if a.defenses:
        grid["b_defenses"] = tuple(a.defenses.split(","))
    if a.partitions:
        for k in ("a_partitions", "b_partitions", "c_partitions"):
            grid[k] = tuple(a.partitions.split(","))
    bad = ([m for m in grid["a_methods"] if m not in A_METHODS]
           + [x for x in grid["b_attacks"] if x not in ATTACKS]
           + [x for x in grid["b_defenses"] if x not in DEFENSES])  # fmt: skip
    if bad:
        ap.error(f"unknown method/attack/defense: {bad}")
    grid_name = a.grid + (" (edited)" if a.methods or a.attacks or a.defenses or a.partitions
                          else "")  # fmt: skip
    out_root = Path(a.out or ROOT / "runs" / f"decide-{a.scale}")
    if a.estimate:
        estimate(questions, a.scale, seeds, grid, out_root, a.budget_min)
        return 0
    base = base_dict(a.scale)
    fill = (a.fill_docs or a.scale == "full") and not a.no_docs
    rescorer = Rescorer()
    records: dict[str, dict] = {}

    def tabulate() -> None:
        for q in questions:
            keys = {run_key(s, seed) for seed in seeds for s in plan(q, grid)}
            recs = [records[k] for k in sorted(records) if k in keys]
            md = write_outputs(q, a.scale, seeds, grid_name, grid, recs, Path(a.results_dir), fill,
                               Path(a.doc_root))  # fmt: skip
            if not a.tables_only:
                continue
            print(f"\nquestion {q}:\n{md}")

    for seed in seeds:  # seed outermost: a complete table after every seed
        for q in questions:
            for s in plan(q, grid):
                k = run_key(s, seed)
                if k in records:
                    continue
                out = out_root / k
                if a.tables_only:
                    if not is_done(out, base["run"]["rounds"], s["tramark"]):
                        continue
                elif not ensure_run(a.scale, s, seed, out_root, base, a.stop_after):
                    print(f"{k}: not finished (stopped)", flush=True)
                    continue
                records[k] = record(out, s, seed, rescorer.items_for(out, a.scale))
                r = records[k]
                print(f"{k}: accuracy {r['rounds'][0]['accuracy']:.3f} -> "
                      f"{r['rounds'][-1]['accuracy']:.3f} (logged), {_acc(r):.3f} on "
                      f"{r['items']['n']} final items", flush=True)  # fmt: skip
                if not a.tables_only:
                    tabulate()
    tabulate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
