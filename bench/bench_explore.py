"""Batched evaluator vs the scalar model: designs per minute on one core.

    .venv/bin/python bench/bench_explore.py [--per-axis 10] [--scalar 300] [--out PATH]

A full grid over six numeric axes of the 8B preset (roma-8b-w2 on llama-3-8b, prompt 128,
generate 128; ``--per-axis`` values each, 10 -> 1,000,000 designs), every field (decode, TTFT,
energy, power, area, ROM/SRAM fit, max context) through
:func:`romsim.explore.evaluate.evaluate_batch`, then ``--scalar`` designs of the same grid
through :func:`romsim.explore.fields.scalar_fields` (checked equal to the batched values).
numpy runs single-threaded and the process is pinned to one CPU.
"""

from __future__ import annotations

import os

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from romsim.config import load_chip  # noqa: E402
from romsim.explore.evaluate import evaluate_batch  # noqa: E402
from romsim.explore.fields import scalar_fields  # noqa: E402
from romsim.modelspec import load_model  # noqa: E402

PRESET, MODEL = "roma-8b-w2", "llama-3-8b"
PROMPT, GEN = 128, 128


def grid(k: int) -> dict[str, np.ndarray]:
    """``k`` values on each of six axes around the preset, all combinations."""
    axes = {
        "cell.cells_per_unit": np.linspace(64, 128, k).round().astype(np.int64),
        "rom.macro_rows": np.linspace(6144, 14336, k).round().astype(np.int64),
        "mesh.cols": np.linspace(12, 24, k).round().astype(np.int64),
        "h_unit.macs_per_unit_per_cycle": np.linspace(64, 1024, k).round().astype(np.int64),
        "tech.clock_hz": np.linspace(2e8, 1.2e9, k),
        "sram.lora_kv_bytes": np.linspace(64 << 20, 512 << 20, k).round().astype(np.int64),
    }
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    return {key: m.ravel() for key, m in zip(axes, mesh, strict=True)}


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_visible": os.cpu_count(),
        "pinned_cpus": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-axis", type=int, default=10)
    ap.add_argument("--scalar", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench/results/explore_batched.json"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    base, model = load_chip(PRESET), load_model(MODEL)
    params = grid(args.per_axis)
    n = len(next(iter(params.values())))

    small = {k: v[:1000] for k, v in params.items()}
    evaluate_batch(base, model, small, PROMPT, GEN)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    res = evaluate_batch(base, model, params, PROMPT, GEN)
    batched_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    sample = rng.choice(n, size=min(args.scalar, n), replace=False)
    chips = []
    t0 = time.perf_counter()
    for i in sample:
        ov = {k: (int(v[i]) if v.dtype.kind == "i" else float(v[i])) for k, v in params.items()}
        chips.append(base.with_overrides(**ov))
    config_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    refs = [scalar_fields(model, c, PROMPT, GEN) for c in chips]
    scalar_s = time.perf_counter() - t0

    worst = 0.0
    for i, ref in zip(sample, refs, strict=True):
        for k, x in ref.items():
            y = res.fields[k][i]
            if isinstance(x, bool):
                assert bool(y) == x, (k, i)
            elif x != y:
                worst = max(worst, abs(y - x) / max(abs(x), abs(y)))
    assert worst <= 1e-9, worst

    dpm = n / batched_s * 60
    sdpm = len(sample) / scalar_s * 60
    sdpm_cfg = len(sample) / (scalar_s + config_s) * 60
    out = {
        "preset": PRESET,
        "model": MODEL,
        "prompt_len": PROMPT,
        "gen_len": GEN,
        "axes": {k: [float(x) for x in np.unique(v)] for k, v in params.items()},
        "fields": sorted(res.fields),
        "n_designs": n,
        "seconds": round(batched_s, 3),
        "designs_per_min": round(dpm),
        "valid": int(res.valid.sum()),
        "fits_rom": int(res.fields["fits_rom"].sum()),
        "scalar_designs": len(sample),
        "scalar_seconds": round(scalar_s, 3),
        "scalar_designs_per_min": round(sdpm),
        "scalar_designs_per_min_with_config": round(sdpm_cfg),
        "vs_scalar": round(dpm / sdpm, 1),
        "vs_scalar_with_config": round(dpm / sdpm_cfg, 1),
        "max_rel_diff_vs_scalar": worst,
        "threads": 1,
        "machine": machine(),
        "command": "NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
        ".venv/bin/python bench/bench_explore.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("axes", "fields")}, indent=1))


if __name__ == "__main__":
    main()
