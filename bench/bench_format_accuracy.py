"""What each chip number format costs in accuracy, on SmolLM2-135M (Q4_1 ROM codes, no LoRA):

- perplexity of the shipped 256-token text (romsim/functional/data/agreement_text.txt) through
  :class:`romsim.functional.model.FunctionalModel`: the float path (ROM codes dequantized, fp32
  arithmetic) and the integer path at ``act_bits`` 6 / 8 / 10 / 12, each KV-cache format;
- cloze accuracy on the federated task (WordNet categories, the held-out items of
  configs/fl-default.toml) with the frozen base in fp32 and in chip numerics at each width and
  KV format (romsim.fl.chip_numerics, the arithmetic the federated clients train in).

    python bench/bench_format_accuracy.py            # bench/results/format_accuracy.json
                                                     # and docs/img/format_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACT_BITS = (6, 8, 10, 12)
KV_FORMATS = ("fp32", "fp16", "bfp8")


def perplexity(g, ids, datapath: str, act_bits: int, kv: str) -> float:
    import numpy as np

    from romsim.functional.model import FunctionalModel

    fm = FunctionalModel.from_gguf(g, datapath=datapath, act_bits=act_bits, kv_format=kv,
                                   max_tokens=len(ids) + 1)  # fmt: skip
    logits = fm.forward(ids, all_logits=True).astype(np.float64)
    m = logits.max(axis=1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    return float(math.exp(nll))


def main() -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "fl-default.toml"))
    ap.add_argument("--eval-examples", type=int, default=160)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "format_accuracy.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "format_accuracy.png"))
    ap.add_argument("--skip-task", action="store_true", help="perplexity only")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads(Path(a.out).read_text()), Path(a.plot))
        return 0

    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path
    from romsim.functional.tokenizer import GGUFTokenizer
    from romsim.functional.torch_ref import AGREEMENT_TEXT

    g = read_gguf(smollm2_gguf_path())
    ids = GGUFTokenizer.from_gguf(g).encode(AGREEMENT_TEXT.read_text(encoding="utf-8"))
    res: dict = {"tokens": len(ids), "perplexity": [], "task": []}
    t0 = time.perf_counter()
    for kv in KV_FORMATS:
        ppl = perplexity(g, ids, "float", 8, kv)
        res["perplexity"].append({"path": "float", "act_bits": None, "kv": kv, "ppl": ppl})
        print(f"ppl float kv={kv}: {ppl:.3f}", flush=True)
        for ab in ACT_BITS:
            ppl = perplexity(g, ids, "int", ab, kv)
            res["perplexity"].append({"path": "int", "act_bits": ab, "kv": kv, "ppl": ppl})
            print(f"ppl int act={ab} kv={kv}: {ppl:.3f}", flush=True)
    res["perplexity_s"] = time.perf_counter() - t0

    if not a.skip_task:
        from romsim.fl.config import load_fl_config
        from romsim.fl.data import load_dataset
        from romsim.fl.train import evaluate, load_bundle

        cfg = load_fl_config(a.config)
        test = load_dataset(cfg.data).test[: a.eval_examples]
        # every width at the chip's KV format (bfp8), every KV format at the chip's width (8)
        settings = [("fp32", 8, "fp32")] + [("chip", ab, "bfp8") for ab in ACT_BITS]
        settings += [("chip", 8, kv) for kv in KV_FORMATS if kv != "bfp8"]
        out = Path(a.out)
        old = json.loads(out.read_text()).get("task", []) if out.is_file() else []
        t0 = time.perf_counter()
        for numerics, ab, kv in settings:
            abk = ab if numerics == "chip" else None
            prev = [
                r for r in old if (r["numerics"], r["act_bits"], r["kv"]) == (numerics, abk, kv)
            ]
            if prev:  # resumable: a setting already scored is kept
                res["task"].append(prev[0])
                continue
            tc = cfg.train.model_copy(update={"numerics": numerics, "act_bits": ab,
                                              "kv_format": kv})  # fmt: skip
            b = load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, tc)
            ev = evaluate(b, test, cfg.train.eval_batch)
            res["task"].append({"numerics": numerics, "act_bits": ab if numerics == "chip" else None,
                                "kv": kv, **ev})  # fmt: skip
            print(f"task {numerics} act={ab} kv={kv}: {ev}", flush=True)
            out.write_text(json.dumps({**old_doc(out), "task": res["task"]}, indent=1))
        res["task_items"] = len(test)
        res["task_s"] = time.perf_counter() - t0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    plot(res, Path(a.plot))
    return 0


def old_doc(out: Path) -> dict:
    return json.loads(out.read_text()) if out.is_file() else {}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 2 if res.get("task") else 1
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    ax = axes[0][0]
    for kv in KV_FORMATS:
        pts = [r for r in res["perplexity"] if r["kv"] == kv and r["path"] == "int"]
        ax.plot([r["act_bits"] for r in pts], [r["ppl"] for r in pts], "o-", label=f"int, KV {kv}")
        fl = next(r["ppl"] for r in res["perplexity"] if r["kv"] == kv and r["path"] == "float")
        ax.axhline(fl, ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("activation mantissa bits (int path)")
    ax.set_ylabel(f"perplexity, {res['tokens']}-token text")
    ax.set_title("dotted: float path, same KV format")
    ax.legend()
    if n == 2:
        ax = axes[0][1]
        for kv in KV_FORMATS:
            pts = [r for r in res["task"] if r["kv"] == kv and r["numerics"] == "chip"]
            n_items = res["task_items"]
            ci = [1.96 * math.sqrt(r["accuracy"] * (1 - r["accuracy"]) / n_items) for r in pts]
            ax.errorbar([r["act_bits"] + 0.1 * KV_FORMATS.index(kv) for r in pts],
                        [r["accuracy"] for r in pts], yerr=ci, capsize=3,
                        fmt="o-" if len(pts) > 1 else "s", label=f"chip, KV {kv}")  # fmt: skip
        fp = next(r for r in res["task"] if r["numerics"] == "fp32")
        ax.axhline(fp["accuracy"], ls=":", color="k", label="fp32")
        ax.set_xlabel("activation mantissa bits (chip numerics)")
        ax.set_ylabel(f"cloze accuracy, {res['task_items']} items (no LoRA), 95 % CI")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
