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
    a = ap.parse_args(argv)
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
    torch_greedy(ref_model, prompt, 2)  # warm-up
    t0 = time.perf_counter()
    ref_ids = torch_greedy(ref_model, prompt, a.new_tokens)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_logits = torch_logits(ref_model, ids256)
    t_ref_prefill = time.perf_counter() - t0
    rows = [
        {
            "impl": "torch_reference_fp32",
            "decode_tokens_per_s": a.new_tokens / t_ref,
            "prefill_256_s": t_ref_prefill,
            "text": tok.decode(ref_ids),
        }
    ]
    configs = [("int", "bfp8", 8), ("int", "fp32", 8), ("float", "fp32", 8), ("int", "fp32", 12)]
    for path, kv, ab in configs:
        fm = FunctionalModel.from_gguf(
            g, datapath=path, kv_format=kv, act_bits=ab, sram_bytes=64 << 20, max_tokens=300
        )
        fm.generate(prompt, 2)  # warm-up / JIT
        out, tm = fm.generate(prompt, a.new_tokens)
        fm.reset()
        t0 = time.perf_counter()
        lg = fm.forward(ids256, all_logits=True)
        t_pf = time.perf_counter() - t0
        rows.append(
            {
                "impl": f"romsim_{path}_kv{kv}_act{ab}",
                "decode_tokens_per_s": tm["decode_tokens_per_s"],
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
        "note": "all timings from one run on this host",
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
