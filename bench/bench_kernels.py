# ruff: noqa: B023  (closures are timed immediately inside the loop that defines them)
"""Kernel benchmark: quantized GEMV/GEMM from ROM words (romsim.kernels, Numba) against torch
dequantize-then-matmul and bitsandbytes NF4 dequantize_4bit+matmul on CPU; all in one run.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python bench/bench_kernels.py --out results/bench_kernels.json

Reports, per case, the median wall time, GB/s of packed weights read (codes + metadata) and
GFLOP/s (2*M*N*K), and the speed ratio against torch's dequantize+matmul measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

CLOCK = time.perf_counter  # --threads 1 switches to process CPU time (robust on shared cores)


def _median_time(fn, min_time_s: float = 0.3, max_reps: int = 200) -> float:
    fn()  # warm-up (JIT compile, caches)
    ts: list[float] = []
    t_end = time.perf_counter() + min_time_s
    while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < max_reps):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return float(np.median(ts))


def torch_affine_dequant_matmul(torch, packed, scale, zero, g, x):
    """torch baseline: unpack 4-bit codes (two per byte, low nibble first), w = s*(q - z),
    then fp32 matmul; what a framework does for a weight-only quantized linear on CPU."""
    lo = packed & 15
    hi = packed >> 4
    q = torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1).float()
    n, k = q.shape
    w = ((q.view(n, k // g, g) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).view(n, k)
    return x @ w.T


def run(shapes, ms, out_path: Path | None) -> dict:
    import torch
    from romsim.kernels.qmatmul import QTensor, qmatmul

    try:
        import bitsandbytes as bnb  # noqa: F401
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    except Exception:  # pragma: no cover
        quantize_4bit = None
    rng = np.random.default_rng(0)
    rows = []
    for n, k in shapes:
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        g = 64
        qt4 = QTensor.quantize(w, 4, g)
        qt2 = QTensor.quantize(w, 2, g)
        qt3 = QTensor.quantize(w, 3, g)
        # a Q4_1 tensor with the same shape (GGUF layout, group 32)
        nb_ = n * k // 32
        raw = np.concatenate(
            [
                (rng.random(nb_) * 0.01).astype(np.float16).view(np.uint8).reshape(nb_, 2),
                (-rng.random(nb_) * 0.05).astype(np.float16).view(np.uint8).reshape(nb_, 2),
                rng.integers(0, 256, (nb_, 16), dtype=np.uint8),
            ],
            1,
        ).reshape(-1)
        q41 = QTensor.from_gguf(raw, "q4_1", n, k)
        codes = qt4.codes().astype(np.uint8)
        packed_t = torch.from_numpy(np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4)))
        scale_t = torch.from_numpy(qt4.scale.copy())
        zero_t = torch.from_numpy(qt4.zero.astype(np.float32))
        w_t = torch.from_numpy(w)
        bnb_state = None
        if quantize_4bit is not None:
            try:
                bnb_w, bnb_state = quantize_4bit(w_t, quant_type="nf4", blocksize=64)
            except Exception as e:  # pragma: no cover
                print(f"bitsandbytes nf4 unavailable: {e}", file=sys.stderr)
        for m in ms:
            x = rng.standard_normal((m, k)).astype(np.float32)
            x_t = torch.from_numpy(x)
            flops = 2.0 * m * n * k
            t_torch = _median_time(
                lambda: torch_affine_dequant_matmul(torch, packed_t, scale_t, zero_t, g, x_t)
            )
            t_dense = _median_time(lambda: x_t @ w_t.T)
            cases = {
                "romsim_w4g64_float": (qt4, "float"),
                "romsim_w4g64_int": (qt4, "int"),
                "romsim_w3g64_int": (qt3, "int"),
                "romsim_w2g64_int": (qt2, "int"),
                "romsim_q4_1_float": (q41, "float"),
                "romsim_q4_1_int": (q41, "int"),
            }
            base = {"N": n, "K": k, "M": m}
            rows.append(
                {
                    **base,
                    "impl": "torch_dequant_matmul_w4g64",
                    "time_s": t_torch,
                    "gb_per_s": qt4.rom_bytes / t_torch / 1e9,
                    "gflop_per_s": flops / t_torch / 1e9,
                    "speedup_vs_torch_dequant": 1.0,
                }
            )
            rows.append(
                {
                    **base,
                    "impl": "torch_fp32_dense_matmul",
                    "time_s": t_dense,
                    "gb_per_s": w.nbytes / t_dense / 1e9,
                    "gflop_per_s": flops / t_dense / 1e9,
                    "speedup_vs_torch_dequant": t_torch / t_dense,
                }
            )
            if bnb_state is not None:

                def _bnb():
                    return x_t @ dequantize_4bit(bnb_w, bnb_state, quant_type="nf4").T

                t_b = _median_time(_bnb)
                nbytes = bnb_w.numel() * bnb_w.element_size() + n * k // 64 * 4
                rows.append(
                    {
                        **base,
                        "impl": "bnb_nf4_dequant_matmul",
                        "time_s": t_b,
                        "gb_per_s": nbytes / t_b / 1e9,
                        "gflop_per_s": flops / t_b / 1e9,
                        "speedup_vs_torch_dequant": t_torch / t_b,
                    }
                )
            for name, (qt, path) in cases.items():
                t = _median_time(lambda qt=qt, path=path: qmatmul(qt, x, path))
                rows.append(
                    {
                        **base,
                        "impl": name,
                        "time_s": t,
                        "gb_per_s": qt.rom_bytes / t / 1e9,
                        "gflop_per_s": flops / t / 1e9,
                        "speedup_vs_torch_dequant": t_torch / t,
                    }
                )
            for r in rows[-(len(cases) + 3) :]:
                print(
                    f"N={n:5d} K={k:5d} M={m:3d} {r['impl']:30s} {r['time_s'] * 1e3:9.3f} ms "
                    f"{r['gb_per_s']:7.2f} GB/s {r['gflop_per_s']:7.2f} GFLOP/s "
                    f"x{r['speedup_vs_torch_dequant']:.2f} vs torch dequant"
                )
    import numba

    res = {
        "bench": "kernels",
        "host": {
            "loadavg_1_5_15": list(os.getloadavg()),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "numba": numba.__version__,
        },
        "note": "all timings from one run on this host; GB/s counts packed ROM bytes (codes+metadata)",
        "clock": "process_time, 1 thread" if CLOCK is time.process_time else "wall (perf_counter)",
        "rows": rows,
    }
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out_path)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench_kernels.json"))
    ap.add_argument("--quick", action="store_true", help="one small shape only")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="1: torch, Numba and the romsim kernels on one thread, timed in process "
        "CPU time (per-core comparison that other load on the host does not skew)",
    )
    a = ap.parse_args(argv)
    shapes = [(1536, 576)] if a.quick else [(1536, 576), (576, 1536), (4096, 4096)]
    ms = [1] if a.quick else [1, 8]
    if a.threads == 1:
        global CLOCK
        import numba
        import romsim.kernels.qmatmul as qm
        import torch

        CLOCK = time.process_time
        torch.set_num_threads(1)
        numba.set_num_threads(1)
        qm.PARALLEL_MIN_WORK = 1 << 62  # never ask for more threads
    run(shapes, ms, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
