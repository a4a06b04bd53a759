"""llama.cpp as a peer: the shipped SmolLM2-135M GGUF through llama.cpp (llama-cpp-python, its
own venv) and through romsim's functional model on the integer path, in one run.

    .venv/bin/python bench/bench_llamacpp.py --out bench/results/llamacpp_peer.json

Bench only, never CI: llama-cpp-python is built from its sdist by ``bench/setup_llamacpp.sh``
into ``.venv-llamacpp`` (about 14 minutes on 2 cores). Without it this prints one line
(``skipped: ...``) and exits 0.

Every measurement runs in its own subprocess pinned (``sched_setaffinity``) to the first ``t``
CPUs: llama.cpp with ``n_threads = n_threads_batch = t``; romsim with ``NUMBA_NUM_THREADS=t``
(and OpenBLAS at ``t``); both with ``OMP_WAIT_POLICY=PASSIVE`` by default (llama.cpp's CPU
backend is OpenMP: with spinning threads its 2-thread decode fell from ~90 to ~2 tokens/s on a
loaded 2-core host). Both see the same token ids (romsim's tokenizer; llama.cpp's own
tokenization of the text is checked against them). Measured:

* prefill tokens/s: the first ``--prefill-tokens`` tokens of the shipped agreement text in one
  call, logits of the last token only;
* decode tokens/s: ``--new-tokens`` greedy single-token steps after "The capital of France is"
  (prompt prefill not timed; each step includes the argmax over the vocabulary);
* wall clock and process CPU time (at one thread CPU time barely moves with other load);
  median and best of ``--repeats``;
* agreement on the ``--prefill-tokens`` positions of the text (llama.cpp ``logits_all=True``
  vs romsim ``all_logits=True``): top-1 agreement, KL(llama.cpp || romsim), max |dlogit|, and
  each one's perplexity of the text.

``--kquant-file`` also makes a Q4_K_M file from the shipped model with llama.cpp's quantizer
(``allow_requantize``) in a temp dir, and reports the same agreement on it (romsim reads the
K-quant / Q5_0 / Q8_0 blocks bit-exact into its ROM image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
PROMPT = "The capital of France is"
SKIP = "bench_llamacpp: skipped: run bench/setup_llamacpp.sh (no importable llama_cpp in {})"


# ------------------------------------------------------------------------------------------------
# Workers (run in subprocesses; the llama.cpp one imports neither romsim nor numba)


def _pin(threads: int) -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def _timed_runs(reset, prefill, step, spec) -> dict:
    """Shared timing loop: ``prefill(ids) -> last logits`` (after ``reset()``),
    ``step(tok) -> logits``. Returns per-repeat wall/CPU figures and the greedy tokens."""
    import numpy as np

    pf_wall, pf_cpu, dec_wall, dec_cpu = [], [], [], []
    greedy: list[int] = []
    n_new = spec["new_tokens"]
    ids = spec["prefill_ids"]
    for r in range(spec["repeats"]):
        reset()
        w0, c0 = time.perf_counter(), time.process_time()
        prefill(ids)
        pf_wall.append(time.perf_counter() - w0)
        pf_cpu.append(time.process_time() - c0)
        reset()
        tok = int(np.argmax(prefill(spec["prompt_ids"])))
        out = [tok]
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_new):
            tok = int(np.argmax(step(tok)))
            out.append(tok)
        dec_wall.append(time.perf_counter() - w0)
        dec_cpu.append(time.process_time() - c0)
        if r == 0:
            greedy = out
    n_pf = len(ids)
    return {
        "prefill_tokens": n_pf,
        "decode_tokens": n_new,
        "prefill_tok_s_wall": [n_pf / t for t in pf_wall],
        "prefill_tok_s_cpu": [n_pf / t for t in pf_cpu],
        "decode_tok_s_wall": [n_new / t for t in dec_wall],
        "decode_tok_s_cpu": [n_new / t for t in dec_cpu],
        "greedy_ids": greedy,
    }


def worker_llamacpp(spec: dict) -> dict:
    import ctypes

    import llama_cpp
    import numpy as np

    t = spec["threads"]
    cpus = _pin(t)
    res: dict = {"cpus": cpus, "llama_cpp_version": llama_cpp.__version__}
    res["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    common = dict(
        model_path=spec["model"],
        n_ctx=spec["n_ctx"],
        n_batch=512,
        n_ubatch=512,
        n_threads=t,
        n_threads_batch=t,
        verbose=False,
    )
    llm = llama_cpp.Llama(logits_all=False, **common)
    n_vocab = llm.n_vocab()
    if spec.get("text") is not None:
        toks = llm.tokenize(spec["text"].encode(), add_bos=False, special=False)
        res["tokenize_same_ids"] = toks[: len(spec["prefill_ids"])] == spec["prefill_ids"]

    def last_logits():
        p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(p, ctypes.POINTER(ctypes.c_float)), (n_vocab,))

    def prefill(ids):
        llm.eval(ids)
        return last_logits()

    def step(tok):
        llm.eval([tok])
        return last_logits()

    if spec["repeats"]:
        prefill(spec["prompt_ids"])  # warm-up
        step(1)
        llm.reset()
        res |= _timed_runs(llm.reset, prefill, step, spec)
    del llm
    if spec.get("logits_out"):
        llm = llama_cpp.Llama(logits_all=True, **common)
        ids = spec["prefill_ids"]
        llm.eval(ids)
        np.save(spec["logits_out"], np.array(llm.scores[: len(ids)], np.float32))
        del llm
    return res


def worker_quantize(spec: dict) -> dict:
    import ctypes

    import llama_cpp

    _pin(spec["threads"])
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    p.allow_requantize = True
    p.nthread = spec["threads"]
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(spec["src"].encode(), spec["dst"].encode(), ctypes.byref(p))
    return {"rc": int(rc), "seconds": time.perf_counter() - t0}


def worker_romsim(spec: dict) -> dict:
    cpus = _pin(spec["threads"])  # NUMBA_NUM_THREADS etc. come from the parent's env
    import numba
    import numpy as np

    from romsim.functional.model import FunctionalModel

    fm = FunctionalModel.from_gguf(
        spec["model"],
        datapath="int",
        kv_format=spec["kv"],
        sram_bytes=64 << 20,
        max_tokens=spec["n_ctx"],
    )
    res: dict = {"cpus": cpus, "numba_threads": numba.get_num_threads(), "kv_format": spec["kv"]}
    if spec["repeats"]:
        fm.generate(spec["prompt_ids"], 3)  # JIT (or cache load) and warm-up
        fm.reset()
        fm.forward(spec["prefill_ids"][:32])

        def prefill(ids):
            return fm.forward(ids)

        def step(tok):
            return fm.forward([tok])

        res |= _timed_runs(fm.reset, prefill, step, spec)
        res["numba_threading_layer"] = numba.threading_layer()
    if spec.get("logits_out"):
        fm.reset()
        np.save(spec["logits_out"], fm.forward(spec["prefill_ids"], all_logits=True))
    return res


WORKERS = {"llamacpp": worker_llamacpp, "romsim": worker_romsim, "quantize": worker_quantize}


# ------------------------------------------------------------------------------------------------
# Driver (project venv)


def _run_worker(python: Path | str, kind: str, spec: dict, tmp: Path, env_extra: dict) -> dict:
    sp = tmp / f"spec_{kind}_{spec.get('threads')}_{time.monotonic_ns()}.json"
    sp.write_text(json.dumps(spec))
    env = dict(os.environ)
    t = str(spec.get("threads", 1))
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
    env.update({"OMP_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MKL_NUM_THREADS": t, **env_extra})
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", kind, "--spec", str(sp)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"bench_llamacpp: {kind} worker failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _llama_ok(python: Path) -> bool:
    if not python.exists():
        return False
    p = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    return p.returncode == 0


def _summ(r: dict) -> dict:
    out = {}
    for key in ("prefill_tok_s_wall", "prefill_tok_s_cpu", "decode_tok_s_wall", "decode_tok_s_cpu"):
        v = r[key]
        out[f"{key}_median"] = statistics.median(v)
        out[f"{key}_best"] = max(v)
    return out


def _agreement(ref, got, ids) -> dict:
    """``ref`` = llama.cpp logits, ``got`` = romsim logits, both ``[T, V]``."""
    import numpy as np

    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    la = a - a.max(1, keepdims=True)
    la -= np.log(np.exp(la).sum(1, keepdims=True))
    lb = b - b.max(1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(1)
    nxt = np.asarray(ids[1:])
    t = np.arange(nxt.size)
    top5 = np.argsort(-b, axis=1)[:, :5]
    return {
        "positions": int(a.shape[0]),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "llamacpp_top1_in_romsim_top5": float((top5 == a.argmax(1)[:, None]).any(1).mean()),
        "kl_llamacpp_romsim_mean_nats": float(kl.mean()),
        "kl_llamacpp_romsim_max_nats": float(kl.max()),
        "max_abs_dlogit": float(np.abs(a - b).max()),
        "mean_abs_dlogit": float(np.abs(a - b).mean()),
        "perplexity_llamacpp": float(np.exp(-la[t, nxt].mean())),
        "perplexity_romsim": float(np.exp(-lb[t, nxt].mean())),
    }


def _tensor_types(path: Path) -> dict[str, int]:
    from collections import Counter

    from romsim.functional.gguf_io import read_gguf

    return dict(Counter(t.ggml_type for t in read_gguf(path).tensors.values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/llamacpp_peer.json")
    ap.add_argument("--threads", default="1,all", help="comma list of counts or 'all'")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv", default="fp16", help="romsim KV format (llama.cpp's default is f16)")
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for both workers ('' = unset). llama.cpp's CPU backend is built "
        "with OpenMP; its spinning threads collapse multi-thread decode on a loaded host",
    )
    ap.add_argument("--kquant-file", action="store_true", help="also compare on a Q4_K_M file")
    ap.add_argument("--llama-python", type=Path, default=LLAMA_PY)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        res = WORKERS[a.worker](json.loads(a.spec.read_text()))
        print(json.dumps(res))
        return 0
    if not _llama_ok(a.llama_python):
        print(SKIP.format(a.llama_python))
        return 0

    import numpy as np

    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path
    from romsim.functional.tokenizer import GGUFTokenizer
    from romsim.functional.torch_ref import AGREEMENT_TEXT

    ncpu = len(os.sched_getaffinity(0))
    threads = sorted({ncpu if s.strip() == "all" else int(s) for s in a.threads.split(",")})
    model = smollm2_gguf_path()
    g = read_gguf(model)
    tok = GGUFTokenizer.from_gguf(g)
    text = AGREEMENT_TEXT.read_text()
    ids = tok.encode(text)[: a.prefill_tokens]
    prompt = tok.encode(PROMPT)
    n_ctx = max(len(ids), len(prompt) + a.new_tokens + 1) + 16
    base = {
        "prefill_ids": ids,
        "prompt_ids": prompt,
        "new_tokens": a.new_tokens,
        "repeats": a.repeats,
        "n_ctx": n_ctx,
    }
    omp = {"OMP_WAIT_POLICY": a.omp_wait_policy} if a.omp_wait_policy else {}
    load0 = list(os.getloadavg())
    rows = []
    agreement = {}
    with tempfile.TemporaryDirectory(prefix="bench_llamacpp_") as td:
        tmp = Path(td)
        for i, t in enumerate(threads):
            first = i == 0
            ll = tmp / "llama_logits.npy"
            rl = tmp / "romsim_logits.npy"
            spec = base | {"model": str(model), "threads": t}
            print(f"[{t} thread(s)] llama.cpp ...", flush=True)
            r_l = _run_worker(
                a.llama_python,
                "llamacpp",
                spec | {"logits_out": str(ll) if first else None, "text": text if first else None},
                tmp,
                omp,
            )
            print(f"[{t} thread(s)] romsim ...", flush=True)
            r_r = _run_worker(
                sys.executable,
                "romsim",
                spec | {"kv": a.kv, "logits_out": str(rl) if first else None},
                tmp,
                omp | {"NUMBA_NUM_THREADS": str(t)},
            )
            s_l, s_r = _summ(r_l), _summ(r_r)
            ratio = {
                k.replace("_tok_s", ""): s_r[k] / s_l[k]
                for k in s_l
                if k.endswith(("median", "best"))
            }
            g_l, g_r = r_l["greedy_ids"], r_r["greedy_ids"]
            same = next((j for j, (x, y) in enumerate(zip(g_l, g_r, strict=True)) if x != y), None)
            rows.append(
                {
                    "threads": t,
                    "llamacpp": s_l | {"cpus": r_l["cpus"], "raw": _raw(r_l)},
                    "romsim_int": s_r
                    | {
                        "cpus": r_r["cpus"],
                        "numba_threads": r_r["numba_threads"],
                        "numba_threading_layer": r_r["numba_threading_layer"],
                        "raw": _raw(r_r),
                    },
                    "ratio_romsim_over_llamacpp": ratio,
                    "greedy_first_divergence": same,
                    "greedy_text_llamacpp": tok.decode(g_l),
                    "greedy_text_romsim": tok.decode(g_r),
                }
            )
            if first:
                info = {k: r_l.get(k) for k in ("llama_cpp_version", "system_info")}
                info["tokenizer_same_ids"] = r_l.get("tokenize_same_ids")
                agreement = _agreement(np.load(ll), np.load(rl), ids)
        kq = None
        if a.kquant_file:
            dst = tmp / "smollm2-135m-q4_k_m.gguf"
            print("[kquant] llama_model_quantize Q4_K_M ...", flush=True)
            q = _run_worker(
                a.llama_python,
                "quantize",
                {"src": str(model), "dst": str(dst), "threads": ncpu},
                tmp,
                omp,
            )
            if q["rc"] != 0 or not dst.exists():
                raise SystemExit(f"bench_llamacpp: llama_model_quantize returned {q['rc']}")
            spec = base | {"model": str(dst), "threads": ncpu, "repeats": 0}
            ll, rl = tmp / "kq_llama.npy", tmp / "kq_romsim.npy"
            print("[kquant] llama.cpp / romsim logits ...", flush=True)
            _run_worker(a.llama_python, "llamacpp", spec | {"logits_out": str(ll)}, tmp, omp)
            _run_worker(
                sys.executable,
                "romsim",
                spec | {"kv": a.kv, "logits_out": str(rl)},
                tmp,
                omp | {"NUMBA_NUM_THREADS": str(ncpu)},
            )
            kq = {
                "ftype": "Q4_K_M (llama_model_quantize, allow_requantize, from the Q4_1 file)",
                "quantize_s": q["seconds"],
                "file_mib": dst.stat().st_size / 2**20,
                "tensor_types": _tensor_types(dst),
                "agreement": _agreement(np.load(ll), np.load(rl), ids),
                "agreement_romsim_q4km_vs_llamacpp_q4_1": _agreement(
                    np.load(tmp / "llama_logits.npy"), np.load(rl), ids
                ),
            }
    res = {
        "bench": "llamacpp_peer",
        "model": f"{model.name} ({g.metadata.get('general.name')})",
        "tensor_types": _tensor_types(model),
        "romsim": {"datapath": "int", "act_bits": 8, "kv_format": a.kv},
        "llamacpp": info,
        "host": {
            "cpus": ncpu,
            "cpu_model": _cpu_model(),
            "omp_wait_policy": a.omp_wait_policy or None,
            "loadavg_1_5_15_start": load0,
            "loadavg_1_5_15_end": list(os.getloadavg()),
        },
        "definitions": (
            f"prefill: {len(ids)} tokens of romsim/functional/data/agreement_text.txt in one "
            f"call, last-token logits; decode: {a.new_tokens} greedy single-token steps after "
            f"{PROMPT!r} (prompt prefill not timed), argmax included; median and best of "
            f"{a.repeats}; wall = perf_counter, cpu = process_time (all threads of the process); "
            "each (impl, threads) in its own subprocess pinned to the first `threads` CPUs"
        ),
        "rows": rows,
        "agreement_q4_1": agreement,
        "kquant": kq,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmpf = a.out.with_suffix(".tmp")
    tmpf.write_text(json.dumps(res, indent=1))
    os.replace(tmpf, a.out)
    _print(res)
    print(f"wrote {a.out}")
    return 0


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _raw(r: dict) -> dict:
    return {k: r[k] for k in r if k.endswith(("_wall", "_cpu"))}


def _print(res: dict) -> None:
    print(f"model {res['model']}; loadavg {res['host']['loadavg_1_5_15_start']}")
    hdr = "threads | impl | prefill tok/s wall (cpu) | decode tok/s wall (cpu) [median]"
    print(hdr)
    for r in res["rows"]:
        for name in ("llamacpp", "romsim_int"):
            s = r[name]
            print(
                f"{r['threads']} | {name} | {s['prefill_tok_s_wall_median']:.1f} "
                f"({s['prefill_tok_s_cpu_median']:.1f}) | {s['decode_tok_s_wall_median']:.1f} "
                f"({s['decode_tok_s_cpu_median']:.1f})"
            )
        rr = r["ratio_romsim_over_llamacpp"]
        print(
            f"{r['threads']} | romsim/llama.cpp | {rr['prefill_wall_median']:.2f} "
            f"({rr['prefill_cpu_median']:.2f}) | {rr['decode_wall_median']:.2f} "
            f"({rr['decode_cpu_median']:.2f}) | greedy diverges at {r['greedy_first_divergence']}"
        )
    ag = res["agreement_q4_1"]
    print("agreement (Q4_1):", {k: round(v, 4) for k, v in ag.items()})
    if res["kquant"]:
        kq = res["kquant"]["agreement"]
        print("agreement (Q4_K_M):", {k: round(v, 4) for k, v in kq.items()})


if __name__ == "__main__":
    sys.exit(main())
