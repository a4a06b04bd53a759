"""Federated LoRA strategies side by side: FedAvg (homogeneous) vs Fed-HeLLo GD-HLA patterns,
RGD-HLA, FIM-HLA and Fed-piLot, under IID and Dirichlet non-IID partitions, same seed, same
devices (same SRAM budgets). Each run is a full ``romsim fl run`` (Flower simulation engine);
finished runs are reused, interrupted ones resumed.

    python bench/bench_fl_compare.py --config configs/fl-default.toml --rounds 3 --steps 4 \
        --out runs/compare            # writes bench/results/fl_compare.{json,md}
"""

from __future__ import annotations

import argparse
import json
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


def markdown(results: list[dict]) -> str:
    lines = [
        "| partition | method | accuracy (base) | eval loss (base) | sim. time to final acc. (s) "
        "| sim. time (s) | device energy (J) | uplink (MB) | layers/client |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["summary"]
        lines.append(
            f"| {r['partition']} | {r['method']} | {s['accuracy']:.3f} ({s['base_accuracy']:.3f}) "
            f"| {s['eval_loss']:.3f} ({s['base_eval_loss']:.3f}) | {s['sim_time_to_final_acc_s']:.2f} "
            f"| {s['sim_time_s']:.2f} | {s['energy_j']:.3f} | {s['bytes_up'] / 1e6:.1f} "
            f"| {s['trained_layers_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


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
    a = ap.parse_args()
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
