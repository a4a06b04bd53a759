"""Does on-device LoRA training work in the chip's own number formats, and what activation
width does it need? The same federated run (configs/fl-default.toml: SmolLM2-135M Q4_1, WordNet
categories, 8 heterogeneous ROMA clients, Fed-piLot) with the frozen base in each arithmetic:

- ``fp32``: float32 copies of the ROM codes (what the federated layer did before),
- ``chip`` at ``act_bits`` 6 / 8 / 10 / 12 (romsim.fl.chip_numerics: the ROM integer kernels,
  BFP activations and output gradients of that width, FP8 LoRA, KV cache in bfp8),
- ``nf4-bnb``: the standard QLoRA recipe (bitsandbytes NF4 + double quantization under peft;
  the Q4_1 weights dequantized and re-quantized to NF4, as a user would load the float model).

Same seeds, data, devices and budget for every row; device time and energy come from the
chip's cost model (for a chip row at its ``act_bits``; the nf4-bnb row is not a chip format and
is costed as the 8-bit chip). Finished runs are reused, interrupted ones resumed.

    python bench/bench_fl_numerics.py --seeds 0   # the default run: 4 rounds, 6 local steps
        # writes bench/results/fl_numerics.{json,md}; --fill-docs puts the table into
        # docs/federated.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODES = (  # table order
    ("fp32 (ROM codes as float32)", "fp32", 8),
    ("chip, act 6 bit", "chip", 6),
    ("chip, act 8 bit", "chip", 8),
    ("chip, act 10 bit", "chip", 10),
    ("chip, act 12 bit", "chip", 12),
    ("bitsandbytes NF4 QLoRA", "nf4-bnb", 8),
)
RUN_ORDER = (0, 2, 5, 1, 4, 3)  # the main question first: fp32, chip at 8 bits, bnb


def _mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (0 for one value)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57}.get(n, 2.45)
    return m, t * sd / math.sqrt(n)


def markdown(results: list[dict], n_items: int = 160) -> str:
    """One row per arithmetic. With one seed the interval is the binomial 95 % interval of the
    final accuracy on the ``n_items`` held-out items; with several, the t interval over seeds."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["mode"], []).append(r)
    lines = [
        "| frozen-base arithmetic | seeds | accuracy, base → final (± 95 % interval) | eval loss "
        "| device time (s) | device energy (J) | host wall per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, *_ in MODES:
        rs = by.get(label)
        if not rs:
            continue
        acc, ci = _mean_ci([r["rounds"][-1]["accuracy"] for r in rs])
        if len(rs) == 1:
            ci = 1.96 * math.sqrt(acc * (1 - acc) / n_items)
        base, _ = _mean_ci([r["rounds"][0]["accuracy"] for r in rs])
        loss, lci = _mean_ci([r["rounds"][-1]["eval_loss"] for r in rs])
        t, _ = _mean_ci([r["rounds"][-1]["sim_time_s"] for r in rs])
        e, _ = _mean_ci([r["rounds"][-1]["energy_j"] for r in rs])
        wall, _ = _mean_ci([sum(x["host_wall_s"] for x in r["rounds"]) for r in rs])
        lines.append(
            f"| {label} | {len(rs)} | {base:.3f} → {acc:.3f} ± {ci:.3f} "
            f"| {loss:.3f}{f' ± {lci:.3f}' if len(rs) > 1 else ''} "
            f"| {t:.2f} | {e:.2f} | {wall:.0f} |"
        )
    return "\n".join(lines) + "\n"


DOC_START = "<!-- fl-numerics:start -->"
DOC_END = "<!-- fl-numerics:end -->"


def fill_docs(results_json: Path, doc: Path, n_items: int) -> None:
    results = json.loads(results_json.read_text())
    results_json.with_suffix(".md").write_text(markdown(results, n_items))
    text = doc.read_text()
    i, j = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    doc.write_text(text[:i] + "\n" + markdown(results, n_items) + text[j:])


def main() -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from romsim.fl.config import fl_config_from_dict, load_fl_config
    from romsim.fl.runner import run_fl

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "fl-default.toml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "numerics"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-examples", type=int, default=160)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--modes", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "fl_numerics"))
    ap.add_argument("--fill-docs", action="store_true", help="only write the table into the docs")
    a = ap.parse_args()
    res_path = Path(a.results)
    if a.fill_docs:
        fill_docs(res_path.with_suffix(".json"), ROOT / "docs" / "federated.md", a.eval_examples)
        return 0
    base = load_fl_config(a.config).to_dict()
    ordered = [MODES[i] for i in RUN_ORDER]
    wanted = [m for m in ordered if not a.modes or m[0] in a.modes.split(",")]
    res_path.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for label, numerics, act_bits in wanted:
            name = f"s{seed}-{numerics}-a{act_bits}"
            d = json.loads(json.dumps(base))
            d["run"].update(rounds=a.rounds, name=name, seed=seed)
            d["train"].update(local_steps=a.steps, numerics=numerics, act_bits=act_bits)
            d["data"].update(eval_examples=a.eval_examples, seed=seed)
            cfg = fl_config_from_dict(d)
            out = Path(a.out) / name
            mpath = out / "metrics.json"
            if mpath.is_file() and (out / "adapter").is_dir():
                rows = json.loads(mpath.read_text())["rounds"]
            else:
                resume = (out / "checkpoint" / "state.json").is_file()
                rows = run_fl(cfg, out=str(out), resume=resume, progress=False)["rows"]
            results.append({"mode": label, "numerics": numerics, "act_bits": act_bits,
                            "seed": seed, "rounds": rows})  # fmt: skip
            res_path.with_suffix(".json").write_text(json.dumps(results, indent=1))
            res_path.with_suffix(".md").write_text(markdown(results, a.eval_examples))
            print(f"{name}: accuracy {rows[0]['accuracy']:.3f} -> {rows[-1]['accuracy']:.3f}, "
                  f"loss {rows[-1]['eval_loss']:.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
