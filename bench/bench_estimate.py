"""Estimates per second of the analytical model (one process, this machine).

    .venv/bin/python bench/bench_estimate.py [--preset roma-8b-w2] [--n 300]

Writes bench/results/estimate.json. One "estimate" is romsim.estimate.estimate(): mapping,
prefill (TTFT), decode over the generated tokens, energy and area, from a fresh PerfModel,
as a design-space sweep calls it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from romsim.config import load_chip
from romsim.estimate import estimate
from romsim.modelspec import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="roma-8b-w2")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "estimate.json"))
    a = ap.parse_args()
    chip = load_chip(a.preset)
    model = load_model(chip.model)
    estimate(model, chip, a.prompt_len, a.gen_len)  # warm-up
    times = []
    for i in range(a.n):
        # vary the design slightly so nothing is cached between calls, as in a sweep
        c = chip.with_overrides(**{"cell.cells_per_unit": 96 + (i % 3)}) if i % 2 else chip
        t0 = time.perf_counter()
        estimate(model, c, a.prompt_len, a.gen_len)
        times.append(time.perf_counter() - t0)
    res = {
        "preset": a.preset,
        "prompt_len": a.prompt_len,
        "gen_len": a.gen_len,
        "n": a.n,
        "median_ms": 1e3 * statistics.median(times),
        "p90_ms": 1e3 * sorted(times)[int(0.9 * len(times))],
        "estimates_per_s": 1 / statistics.median(times),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
