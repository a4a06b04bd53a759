"""Federated LoRA strategies side by side: FedAvg (homogeneous) vs Fed-HeLLo GD-HLA patterns,
RGD-HLA, FIM-HLA and Fed-piLot, under IID and Dirichlet non-IID partitions, same seed, same
devices (same SRAM budgets). Each run is a full ``romsim fl run`` (Flower simulation engine);
finished runs are reused, interrupted ones resumed.

    python bench/bench_fl_compare.py --config configs/fl-default.toml --rounds 3 --steps 4 \
        --out runs/compare            # writes bench/results/fl_compare.{json,md}
    python bench/bench_fl_compare.py --paired    # then: exact McNemar test of every final
                                                 # adapter against FedAvg on the same items
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METHODS = (
    ("FedAvg (homogeneous)", "fedavg", "uniform"),
    ("GD-HLA triangle", "gd-hla", "triangle"),
    ("RGD-HLA triangle", "rgd-hla", "triangle"),
    ("FIM-HLA", "fim-hla", "uniform"),
    ("Fed-piLot", "fed-pilot", "uniform"),
    ("GD-HLA inverted", "gd-hla", "inverted"),
    ("GD-HLA bottleneck", "gd-hla", "bottleneck"),
    ("GD-HLA uniform", "gd-hla", "uniform"),
)


def summarize(rows: list[dict]) -> dict:
    last = rows[-1]
    target = last["accuracy"]
    t_reach = next(r["sim_time_s"] for r in rows if r["accuracy"] >= target)
    return {
        "base_accuracy": rows[0]["accuracy"],
        "accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rows),
        "eval_loss": last["eval_loss"],
        "base_eval_loss": rows[0]["eval_loss"],
        "sim_time_to_final_acc_s": t_reach,
        "sim_time_s": last["sim_time_s"],
        "energy_j": last["energy_j"],
        "bytes_up": sum(r["bytes_up"] for r in rows),
        "trained_layers_mean": sum(r["trained_layers_mean"] for r in rows[1:])
        / max(1, len(rows) - 1),
        "host_wall_s": sum(r["host_wall_s"] for r in rows),
    }


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test: ``b`` items only method 1 got right, ``c`` only method 2."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def markdown(results: list[dict]) -> str:
    paired = any("paired" in r for r in results)
    lines = [
        "| partition | method | accuracy (base → each round) | eval loss (base) "
        "| sim. time to final acc. (s) "
        "| sim. time (s) | device energy (J) | uplink (MB) | layers/client |"
        + (" vs FedAvg: +/- items, McNemar p |" if paired else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if paired else ""),
    ]
    for r in results:
        s = r["summary"]
        row = (
            f"| {r['partition']} | {r['method']} "
            f"| {' → '.join(format(x['accuracy'], '.3f') for x in r['rounds'])} "
            f"| {s['eval_loss']:.3f} ({s['base_eval_loss']:.3f}) | {s['sim_time_to_final_acc_s']:.2f} "
            f"| {s['sim_time_s']:.2f} | {s['energy_j']:.3f} | {s['bytes_up'] / 1e6:.1f} "
            f"| {s['trained_layers_mean']:.1f} |"
        )
        if paired:
            p = r.get("paired")
            row += " – |" if not p or r["strategy"] == "fedavg" else (
                f" +{p['only_this']} / -{p['only_fedavg']}, p = {p['p']:.2f} |")  # fmt: skip
        lines.append(row)
    return "\n".join(lines) + "\n"


def paired(res_path: Path, out_root: Path, config: str) -> None:
    """Score every finished run's final global adapter on the same held-out items and compare
    it item by item with FedAvg on the same partition (exact McNemar test)."""
    import numpy as np

    from romsim.fl.config import fl_config_from_dict, load_fl_config
    from romsim.fl.data import load_dataset
    from romsim.fl.runner import read_checkpoint
    from romsim.fl.train import load_bundle, predict, set_adapter

    results = json.loads(res_path.with_suffix(".json").read_text())
    cfg = load_fl_config(config)
    bundle = load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
    right: dict[str, np.ndarray] = {}
    for r in results:
        out = out_root / f"{r['partition']}-{r['strategy']}-{r['pattern']}"
        run_cfg = fl_config_from_dict(json.loads((out / "config.json").read_text()))
        test = load_dataset(run_cfg.data).test[: run_cfg.data.eval_examples]
        set_adapter(bundle, read_checkpoint(out / "checkpoint")[1])
        ok = predict(bundle, test, run_cfg.train.eval_batch) == np.array([e.label for e in test])
        acc = float(ok.mean())
        if abs(acc - r["summary"]["accuracy"]) > 1e-9:
            # same bits and batches as the run's own evaluation: should not happen
            print(f"WARNING {out}: re-scored {acc} != logged {r['summary']['accuracy']}")
        right[out.name] = ok
        print(f"{out.name}: {acc:.3f}", flush=True)
    for r in results:
        mine = right[f"{r['partition']}-{r['strategy']}-{r['pattern']}"]
        base = right.get(f"{r['partition']}-fedavg-uniform")
        if base is None:
            continue
        b, c = int((mine & ~base).sum()), int((~mine & base).sum())
        r["paired"] = {"only_this": b, "only_fedavg": c, "p": mcnemar_p(b, c)}
    res_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    res_path.with_suffix(".md").write_text(markdown(results))


DOC_START = "<!-- fl-compare:start -->"
DOC_END = "<!-- fl-compare:end -->"


def fill_docs(results_json: Path, doc: Path) -> None:
    """Put the comparison table between the markers in docs/federated.md."""
    results = json.loads(results_json.read_text())
    text = doc.read_text()
    i, j = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    n_methods = len({r["method"] for r in results})
    parts = sorted({r["partition"] for r in results})
    note = (
        f"\n{len(results)} finished runs: {n_methods} methods, partitions {', '.join(parts)}.\n\n"
    )
    doc.write_text(text[:i] + note + markdown(results) + "\n" + text[j:])


def main() -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from romsim.fl.config import fl_config_from_dict, load_fl_config
    from romsim.fl.runner import run_fl

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "fl-default.toml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--eval-examples", type=int, default=160)
    ap.add_argument("--partitions", default="iid,dirichlet")
    ap.add_argument("--methods", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "fl_compare"))
    ap.add_argument("--fill-docs", action="store_true", help="only write the table into the docs")
    ap.add_argument("--paired", action="store_true",
                    help="only re-score the finished runs' adapters: McNemar test vs FedAvg")  # fmt: skip
    a = ap.parse_args()
    if a.paired:
        paired(Path(a.results), Path(a.out), a.config)
        return 0
    if a.fill_docs:
        fill_docs(Path(a.results).with_suffix(".json"), ROOT / "docs" / "federated.md")
        return 0
    base = load_fl_config(a.config).to_dict()
    wanted = [m for m in METHODS if not a.methods or m[0] in a.methods.split(",")]
    results = []
    res_path = Path(a.results)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    for label, strat, pattern in wanted:
        for part in a.partitions.split(","):
            d = json.loads(json.dumps(base))
            d["run"].update(rounds=a.rounds, name=f"{part}-{strat}-{pattern}")
            d["train"]["local_steps"] = a.steps
            d["data"].update(partition=part, eval_examples=a.eval_examples)
            d["strategy"].update(name=strat, pattern=pattern)
            cfg = fl_config_from_dict(d)
            out = Path(a.out) / f"{part}-{strat}-{pattern}"
            mpath = out / "metrics.json"
            done = mpath.is_file() and (out / "adapter").is_dir()
            if done:
                rows = json.loads(mpath.read_text())["rounds"]
            else:
                resume = (out / "checkpoint" / "state.json").is_file()
                rows = run_fl(cfg, out=str(out), resume=resume, progress=False)["rows"]
            results.append({"partition": part, "method": label, "strategy": strat,
                            "pattern": pattern, "rounds": rows, "summary": summarize(rows)})  # fmt: skip
            res_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
            res_path.with_suffix(".md").write_text(markdown(results))
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
