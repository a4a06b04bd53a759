"""Functional benchmark: SmolLM2-135M (Q4_1 ROM image) through romsim.kernels vs the torch
reference (transformers LlamaForCausalLM, fp32, same dequantized weights); one run.

    NUMBA_CACHE_DIR=.cache/numba .venv/bin/python bench/bench_functional.py --out results/bench_functional.json

Measures greedy decode tokens/s (32 new tokens after "The capital of France is"), 256-token
prefill time, and top-1 agreement / max |dlogit| against torch on the shipped 256-token text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "The capital of France is"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench_functional.json"))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="1: torch and romsim on one thread, timed in process CPU time",
    )
    a = ap.parse_args(argv)
    clock = time.process_time if a.threads == 1 else time.perf_counter
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numba
    import torch

    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path
    from romsim.functional.model import FunctionalModel
    from romsim.functional.tokenizer import GGUFTokenizer
    from romsim.functional.torch_ref import (
        AGREEMENT_TEXT,
        build_torch_reference,
        torch_greedy,
        torch_logits,
    )

    g = read_gguf(smollm2_gguf_path())
    tok = GGUFTokenizer.from_gguf(g)
    ids256 = tok.encode(AGREEMENT_TEXT.read_text())[:256]
    prompt = tok.encode(PROMPT)
    ref_model = build_torch_reference(g)
    if a.threads == 1:
        import romsim.kernels.qmatmul as qm

        numba.set_num_threads(1)
        qm.PARALLEL_MIN_WORK = 1 << 62
    rows = []
    ref_ids = None
    ref_logits = None
    for threads in (1,) if a.threads == 1 else (None, 1):
        torch_greedy(ref_model, prompt, 2, threads=threads)  # warm-up
        t0 = clock()
        ids_t = torch_greedy(ref_model, prompt, a.new_tokens, threads=threads)
        t_ref = clock() - t0
        t0 = clock()
        lg_t = torch_logits(ref_model, ids256, threads=threads)
        t_ref_prefill = clock() - t0
        ref_ids = ref_ids or ids_t
        ref_logits = lg_t if ref_logits is None else ref_logits
        nthr = torch.get_num_threads() if threads is None else threads
        rows.append(
            {
                "impl": f"torch_reference_fp32_{nthr}threads",
                "decode_tokens_per_s": a.new_tokens / t_ref,
                "prefill_256_s": t_ref_prefill,
                "text": tok.decode(ids_t),
            }
        )
    configs = [("int", "bfp8", 8), ("int", "fp32", 8), ("float", "fp32", 8), ("int", "fp32", 12)]
    for path, kv, ab in configs:
        fm = FunctionalModel.from_gguf(
            g, datapath=path, kv_format=kv, act_bits=ab, sram_bytes=64 << 20, max_tokens=300
        )
        fm.generate(prompt, 2)  # warm-up / JIT
        fm.reset()
        t0 = clock()
        logits = fm.forward(prompt)
        out = []
        for step in range(a.new_tokens):  # greedy, as torch_greedy (prefill is tiny)
            out.append(int(np.argmax(logits)))
            if step + 1 < a.new_tokens:
                logits = fm.forward([out[-1]])
        t_dec = clock() - t0
        fm.reset()
        t0 = clock()
        lg = fm.forward(ids256, all_logits=True)
        t_pf = clock() - t0
        rows.append(
            {
                "impl": f"romsim_{path}_kv{kv}_act{ab}",
                "decode_tokens_per_s": a.new_tokens / t_dec,
                "prefill_256_s": t_pf,
                "top1_agreement_256": float((lg.argmax(1) == ref_logits.argmax(1)).mean()),
                "max_abs_dlogit_256": float(np.abs(lg - ref_logits).max()),
                "greedy_identical_to_torch": out == ref_ids,
                "text": tok.decode(out),
            }
        )
    for r in rows:
        r["decode_ratio_vs_torch"] = r["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"]
        print(
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "text"}
        )
    res = {
        "bench": "functional",
        "model": "SmolLM2-135M-Instruct Q4_1",
        "host": {
            "loadavg_1_5_15": list(os.getloadavg()),
            "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
        },
        "note": "all timings from one run on this host; decode tokens/s = new tokens / time of "
        "(5-token prompt prefill + decode), same definition for torch and romsim",
        "clock": "process_time, 1 thread" if a.threads == 1 else "wall (perf_counter)",
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
