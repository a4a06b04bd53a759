"""Sweep runs: a grid expanded lazily in chunks, evaluated (in process or as Ray tasks),
constraints applied, the Pareto front flagged, and every chunk written atomically so that a
killed run resumes (``--resume``) with identical results.

A run folder holds ``spec.toml`` (verbatim), ``manifest.json`` (content hash of spec + romsim
version + base chip), ``base_chip.json``, ``chunks/chunk-NNNNNN.parquet`` and, when done,
``results.parquet``, ``summary.json``, ``front.png``, ``front.html``, ``sensitivity.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from romsim.errors import RomsimInputError
from romsim.explore.fields import FIELDS
from romsim.explore.spec import BOOL_FIELDS, WORKLOAD_KEYS, SweepSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

STORE_ALL_MAX = 1_000_000  # larger grids store the feasible designs only
CHUNK_META_KEY = b"romsim_chunk"


# ---------------------------------------------------------------------------------- design IDs
def _native(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def design_id(params: dict[str, Any]) -> str:
    """A short stable hash of a design's parameter values (canonical JSON)."""
    canon = json.dumps({k: _native(v) for k, v in sorted(params.items())}, sort_keys=True)
    return hashlib.blake2b(canon.encode(), digest_size=6).hexdigest()


def design_ids(params: dict[str, np.ndarray], n: int) -> list[str]:
    keys = sorted(params)
    cols = [params[k].tolist() for k in keys]
    return (
        [design_id(dict(zip(keys, row, strict=True))) for row in zip(*cols, strict=True)]
        if keys
        else [design_id({})] * n
    )


def spec_hash(spec: SweepSpec) -> str:
    from romsim import __version__

    h = hashlib.blake2b(digest_size=16)
    h.update(spec.text.encode())
    h.update(b"\0" + __version__.encode() + b"\0")
    h.update(json.dumps(spec.base.model_dump(), sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- the grid
def grid_params(spec: SweepSpec, start: int, stop: int) -> dict[str, np.ndarray]:
    """Axis values of grid designs ``start..stop`` (row-major over the axes, last axis fastest)."""
    import numpy as np

    shape = tuple(len(a) for a in spec.axes)
    idx = np.unravel_index(np.arange(start, stop, dtype=np.int64), shape)
    return {a.key: axis_array(a)[i] for a, i in zip(spec.axes, idx, strict=True)}


def axis_array(axis) -> np.ndarray:
    import numpy as np

    dtype = {"int": np.int64, "float": np.float64, "bool": bool, "str": object}[axis.kind]
    return np.array(list(axis.values), dtype=dtype)


# ---------------------------------------------------------------------------------- evaluation
def _scalar_evaluate(base, model, params, prompt_len, gen_len, fields=None) -> dict:
    """Fallback for the batched evaluator: the scalar model design by design (same structure)."""
    import numpy as np

    from romsim.explore.fields import scalar_fields

    fields = list(fields or FIELDS)
    n = len(prompt_len)
    out = {f: np.full(n, np.nan) for f in fields}
    valid = np.zeros(n, dtype=bool)
    train = any(f.startswith("train_") for f in fields)
    keys = list(params)
    for i in range(n):
        over = {k: _native(params[k][i]) for k in keys}
        try:
            chip = base.with_overrides(**over) if over else base
            r = scalar_fields(model, chip, int(prompt_len[i]), int(gen_len[i]), train=train)
        except (RomsimInputError, ValueError, ZeroDivisionError):
            continue
        valid[i] = True
        for f in fields:
            out[f][i] = float(r.get(f, np.nan))
    out["valid"] = valid
    return out


def _evaluator() -> Callable:
    """The batched evaluator (romsim.explore.evaluate) when present, else the scalar loop; one
    signature: (base, model, params, prompt_len, gen_len, fields, prune, train)."""
    try:
        from romsim.explore import evaluate as ev
    except ImportError:
        ev = None
    if ev is not None and hasattr(ev, "evaluate_batch"):
        return ev.evaluate_batch
    if ev is not None and hasattr(ev, "evaluate_designs"):

        def call(base, model, params, prompt_len, gen_len, fields=None, prune=None, train=False):
            return ev.evaluate_designs(base, model, params, prompt_len, gen_len, fields)

        return call

    def scalar(base, model, params, prompt_len, gen_len, fields=None, prune=None, train=False):
        return _scalar_evaluate(base, model, params, prompt_len, gen_len, fields)

    return scalar


def evaluator_name() -> str:
    try:
        from romsim.explore import evaluate  # noqa: F401
    except ImportError:
        return "scalar (romsim.explore.fields.scalar_fields per design)"
    return "batched (romsim.explore.evaluate)"


def _prune_args(spec: SweepSpec) -> dict[str, Any]:
    """Constraints the batched evaluator can check cheaply before the full model."""
    out: dict[str, Any] = {}
    for c in spec.constraints:
        if c.field in ("fits_rom", "fits_sram") and c.value is True:
            out[c.field] = True
        elif c.field == "area_mm2" and c.op == "<=":
            out["area_mm2_max"] = min(float(c.value), out.get("area_mm2_max", math.inf))
        elif c.field == "max_context_tokens" and c.op == ">=":
            out["max_context_tokens_min"] = max(
                float(c.value), out.get("max_context_tokens_min", 0)
            )
    return out


def _unpack(res: Any, n: int) -> tuple[dict, np.ndarray, dict]:
    """A plain dict of arrays, or a result object with ``.fields`` (and ``.valid``/``.pruned``)."""
    import numpy as np

    if isinstance(res, dict):
        fields, pruned, valid = res, res.get("pruned", {}), res.get("valid")
    else:
        fields = res.fields
        pruned = getattr(res, "pruned", None) or {}
        valid = getattr(res, "valid", None)
        if valid is None:
            valid = fields.get("valid")
    if valid is None:
        valid = np.ones(n, dtype=bool)
    if not isinstance(pruned, dict):
        pruned = {}
    return fields, np.asarray(valid, dtype=bool), {str(k): int(v) for k, v in pruned.items()}


def evaluate_params(
    spec: SweepSpec, params: dict[str, np.ndarray], prune: bool = False
) -> tuple[pd.DataFrame, dict]:
    """One frame of designs (parameters, ``valid``, every field, constraint slack, ``feasible``,
    ``removed_by``) and its counts; one evaluator call per model."""
    import numpy as np
    import pandas as pd

    from romsim.modelspec import load_model

    n = len(next(iter(params.values())))
    fields = spec.fields
    w = spec.workload
    prompt = params.get("workload.prompt_len", np.full(n, w.prompt_len, dtype=np.int64))
    gen = params.get("workload.gen_len", np.full(n, w.gen_len, dtype=np.int64))
    models = params.get("model", np.full(n, spec.model, dtype=object))
    chip_keys = [k for k in params if k != "model" and k not in WORKLOAD_KEYS]
    vals = {f: np.full(n, np.nan) for f in fields}
    valid = np.zeros(n, dtype=bool)
    ev_pruned: dict[str, int] = {}
    evaluate = _evaluator()
    for name in dict.fromkeys(models.tolist()):
        mask = models == name
        m = int(mask.sum())
        sub = {k: params[k][mask] for k in chip_keys}
        if not sub:  # the evaluator sizes its batch from the parameters
            sub = {"operating.batch": np.full(m, spec.base.operating.batch, dtype=np.int64)}
        res = evaluate(
            spec.base, load_model(name), sub, prompt[mask], gen[mask], fields,
            _prune_args(spec) if prune else None, spec.needs_train,
        )  # fmt: skip
        fv, ok, pr = _unpack(res, m)
        for f in fields:
            if f in fv:
                vals[f][mask] = np.asarray(fv[f], dtype=np.float64)
        valid[mask] = ok
        for k, v in pr.items():
            ev_pruned[k] = ev_pruned.get(k, 0) + v
    for f in fields:
        vals[f][~valid] = np.nan
    df = pd.DataFrame({"design_id": design_ids(params, n)})
    for k, v in params.items():
        df[k] = v
    df["valid"] = valid
    for f in fields:
        if f in BOOL_FIELDS:
            df[f] = pd.array(
                [None if not ok else bool(x) for x, ok in zip(vals[f], valid, strict=True)],
                dtype="boolean",
            )
        else:
            df[f] = vals[f]
    feasible = valid.copy()
    removed = np.where(valid, "", "invalid").astype(object)
    counts: dict[str, Any] = {"n": n, "valid": int(valid.sum()), "removed_by": {}, "violations": {}}
    # A design is removed by the first constraint it fails in spec order; one whose figure is
    # NaN (pruned by the evaluator before the full model) goes to the first failed constraint
    # with a figure, else to the first NaN one.
    slacks = {c.name: constraint_slack(c, vals[c.field]) for c in spec.constraints}
    for c in spec.constraints:
        counts["removed_by"][c.name] = 0
    for nan_pass in (False, True):
        for c in spec.constraints:
            s = slacks[c.name]
            fail = (np.isnan(s) if nan_pass else s < 0) & feasible
            removed[fail] = c.name
            counts["removed_by"][c.name] += int(fail.sum())
            feasible &= ~fail
    for c in spec.constraints:
        df[f"slack.{c.name}"] = slacks[c.name]
        counts["violations"][c.name] = int((valid & ~(slacks[c.name] >= 0)).sum())
    df["feasible"] = feasible
    df["removed_by"] = removed
    counts["feasible"] = int(feasible.sum())
    counts["evaluator_pruned"] = ev_pruned
    return df, counts


def constraint_slack(c, x: np.ndarray) -> np.ndarray:
    """How far a design is inside (>= 0) or outside (< 0) a constraint."""
    import numpy as np

    v = float(c.value)
    with np.errstate(invalid="ignore"):
        if c.op == "<=":
            return v - x
        if c.op == ">=":
            return x - v
        return -np.abs(x - v) + 0.0  # no -0.0


# ---------------------------------------------------------------------------------- Pareto
def pareto_flags(df: pd.DataFrame, objectives) -> np.ndarray:
    """Non-dominated designs among the feasible ones (``paretoset``; ties all kept)."""
    import numpy as np
    from paretoset import paretoset

    flags = np.zeros(len(df), dtype=bool)
    cols = [o.field for o in objectives]
    costs = df[cols].to_numpy(dtype=np.float64)
    cand = df["feasible"].to_numpy(dtype=bool) & np.isfinite(costs).all(axis=1)
    if cand.any():
        sense = [o.resolved_sense for o in objectives]
        flags[np.flatnonzero(cand)] = paretoset(costs[cand], sense=sense, distinct=False)
    return flags


def hypervolume(front: np.ndarray, ideal: np.ndarray, nadir: np.ndarray) -> float:
    """pymoo's HV of a minimisation front, normalised to [ideal, nadir], reference 1.1."""
    import numpy as np
    from pymoo.indicators.hv import HV

    if len(front) == 0:
        return 0.0
    span = np.where(nadir > ideal, nadir - ideal, 1.0)
    f = (front - ideal) / span
    return float(HV(ref_point=np.full(front.shape[1], 1.1))(f))


def min_costs(df: pd.DataFrame, objectives) -> np.ndarray:
    import numpy as np

    cols = [
        df[o.field].to_numpy(np.float64) * (-1 if o.resolved_sense == "max" else 1)
        for o in objectives
    ]
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------------- run folder
def _write_bytes_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_run_dir(spec: SweepSpec, out: str, resume: bool) -> Path:
    from romsim import __version__, jsonout
    from romsim.paths import check_output_dir, write_text_atomic

    run = check_output_dir(out, "--out")
    manifest = run / "manifest.json"
    h = spec_hash(spec)
    if manifest.exists():
        if not resume:
            raise RomsimInputError(
                "--out",
                out,
                "holds a sweep already; add --resume to continue it, or pick a new folder",
            )
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            raise RomsimInputError("--out", out, "has an unreadable manifest.json") from None
        if old.get("spec_hash") != h:
            raise RomsimInputError(
                "--resume", out, "the run was made from a different spec or romsim version "
                f"(hash {old.get('spec_hash')!r}, this one {h!r})",
            )  # fmt: skip
        return run
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "spec.toml", spec.text)
    write_text_atomic(run / "base_chip.json", jsonout.dumps(spec.base.model_dump(), indent=2))
    info = {
        "spec_hash": h,
        "romsim_version": __version__,
        "spec_source": spec.source,
        "base": spec.base_ref,
        "method": spec.search.method,
        "grid_size": spec.grid_size,
        "chunk_size": spec.search.chunk_size,
        "axes": [a.key for a in spec.axes],
    }
    write_text_atomic(manifest, jsonout.dumps(info, indent=2))
    return run


def _chunk_path(run: Path, i: int) -> Path:
    return run / "chunks" / f"chunk-{i:06d}.parquet"


def write_chunk(run: Path, i: int, df: pd.DataFrame, counts: dict, feasible_only: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if feasible_only:
        df = df[df["feasible"]]
    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.replace_schema_metadata(
        {**(t.schema.metadata or {}), CHUNK_META_KEY: json.dumps(counts).encode()}
    )
    _write_bytes_atomic(_chunk_path(run, i), lambda p: pq.write_table(t, p))


def read_chunk(path: Path) -> tuple[Any, dict]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return t, json.loads(t.schema.metadata[CHUNK_META_KEY])


def _eval_chunk(spec: SweepSpec, i: int) -> tuple[pd.DataFrame, dict]:
    cs = spec.search.chunk_size
    start, stop = i * cs, min((i + 1) * cs, spec.grid_size)
    prune = spec.grid_size > STORE_ALL_MAX  # only the feasible designs are kept anyway
    return evaluate_params(spec, grid_params(spec, start, stop), prune=prune)


# ---------------------------------------------------------------------------------- Ray
def _ray_init(address: str) -> tuple[Any, Callable[[], None]]:
    """ray.init for ``local`` (2 CPUs, temp dir of its own), ``auto`` or a cluster address."""
    import ray

    if ray.is_initialized():
        return ray, lambda: None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    tmp = None
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address == "local":
        tmp = tempfile.mkdtemp(prefix="romsim-ray-")
        os.environ["RAY_TMPDIR"] = tmp
        kwargs |= {"num_cpus": min(2, os.cpu_count() or 1), "_temp_dir": tmp}
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RomsimInputError("--ray", address, f"cannot reach a Ray cluster ({e})") from None

    def done() -> None:
        ray.shutdown()
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    return ray, done


def _run_chunks_ray(spec, todo, address, on_done) -> None:
    ray, shutdown = _ray_init(address)
    try:
        task = ray.remote(_eval_chunk)
        ref = ray.put(spec)
        width = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = list(todo)
        pending: dict[Any, int] = {}
        while queue or pending:
            while queue and len(pending) < width:
                i = queue.pop(0)
                pending[task.remote(ref, i)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for r in ready:
                i = pending.pop(r)
                df, counts = ray.get(r)
                if on_done(i, df, counts) is False:
                    for p in pending:
                        ray.cancel(p)
                    return
    finally:
        shutdown()


# ---------------------------------------------------------------------------------- grid runs
def run_grid(
    spec: SweepSpec,
    out: str,
    resume: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> dict | None:
    """Run (or resume) a grid sweep; the summary, or None if stopped early (a test's 'kill')."""
    run = prepare_run_dir(spec, out, resume)
    t0 = time.perf_counter()
    total = spec.grid_size
    cs = spec.search.chunk_size
    n_chunks = math.ceil(total / cs)
    feasible_only = total > STORE_ALL_MAX
    done = {i for i in range(n_chunks) if _chunk_path(run, i).exists()}
    todo = [i for i in range(n_chunks) if i not in done]
    written = 0

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("explore"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not progress, transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("designs", total=total)
        bar.update(task, completed=sum(min(cs, total - i * cs) for i in done))

        def on_done(i: int, df, counts) -> bool:
            nonlocal written
            write_chunk(run, i, df, counts, feasible_only)
            written += 1
            bar.advance(task, counts["n"])
            return stop_after_chunks is None or written < stop_after_chunks

        if todo and ray_address:
            _run_chunks_ray(spec, todo, ray_address, on_done)
        else:
            for i in todo:
                if not on_done(i, *_eval_chunk(spec, i)):
                    break
    if stop_after_chunks is not None and written >= stop_after_chunks and len(todo) > written:
        return None
    return finish_grid(spec, run, n_chunks, feasible_only, time.perf_counter() - t0)


def finish_grid(
    spec: SweepSpec, run: Path, n_chunks: int, feasible_only: bool, seconds: float
) -> dict:
    import pyarrow as pa

    tables, counts = [], []
    for i in range(n_chunks):
        t, c = read_chunk(_chunk_path(run, i))
        tables.append(t.replace_schema_metadata(None))
        counts.append(c)
    df = pa.concat_tables(tables).to_pandas()
    for f in BOOL_FIELDS & set(df.columns):
        df[f] = df[f].astype("boolean")
    agg = merge_counts(counts)
    return write_outputs(
        spec, run, df, agg, stored="feasible" if feasible_only else "all", seconds=seconds
    )


def merge_counts(counts: list[dict]) -> dict:
    out: dict[str, Any] = {
        "n": 0,
        "valid": 0,
        "feasible": 0,
        "removed_by": {},
        "violations": {},
        "evaluator_pruned": {},
    }
    for c in counts:
        for k in ("n", "valid", "feasible"):
            out[k] += c[k]
        for k in ("removed_by", "violations", "evaluator_pruned"):
            for name, v in c[k].items():
                out[k][name] = out[k].get(name, 0) + v
    return out


# ---------------------------------------------------------------------------------- outputs
def write_outputs(
    spec: SweepSpec, run: Path, df: pd.DataFrame, counts: dict, stored: str, seconds: float,
    extra: dict | None = None,
) -> dict:  # fmt: skip
    """Pareto flags, results.parquet, plots and summary.json; returns the summary."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from romsim import __version__, jsonout
    from romsim.explore import plots
    from romsim.paths import write_text_atomic

    df = df.reset_index(drop=True)
    df["pareto"] = pareto_flags(df, spec.objectives)
    t = pa.Table.from_pandas(df, preserve_index=False)
    _write_bytes_atomic(run / "results.parquet", lambda p: pq.write_table(t, p))
    front = df[df["pareto"]]
    best = {}
    feas = df[df["feasible"]]
    for o in spec.objectives:
        col = feas[o.field].dropna()
        if len(col):
            i = col.idxmax() if o.resolved_sense == "max" else col.idxmin()
            best[o.field] = {
                "sense": o.resolved_sense,
                "value": float(df.at[i, o.field]),
                "design_id": df.at[i, "design_id"],
                "params": {a.key: _native(df.at[i, a.key]) for a in spec.axes},
            }
    hv = None
    if len(front):
        costs = min_costs(feas, spec.objectives)
        ok = np.isfinite(costs).all(axis=1)
        hv = hypervolume(
            min_costs(front, spec.objectives), costs[ok].min(axis=0), costs[ok].max(axis=0)
        )
    files = {"results": "results.parquet"}
    files |= plots.write_plots(spec, run, df)
    sens = plots.sensitivity(spec, df)
    if sens:
        plots.sensitivity_png(sens, run / "sensitivity.png")
        files["sensitivity"] = "sensitivity.png"
    summary = {
        "spec": spec.source,
        "spec_hash": spec_hash(spec),
        "romsim_version": __version__,
        "base": spec.base_ref,
        "method": spec.search.method,
        "grid_size": spec.grid_size,
        "evaluated": counts["n"],
        "stored": stored,
        "stored_rows": len(df),
        "valid": counts["valid"],
        "invalid": counts["n"] - counts["valid"],
        "feasible": counts["feasible"],
        "pruned_by_constraint": counts["removed_by"],
        "violations_by_constraint": counts["violations"],
        "evaluator_pruned": counts["evaluator_pruned"],
        "front_size": int(df["pareto"].sum()),
        "objectives": [{"field": o.field, "sense": o.resolved_sense} for o in spec.objectives],
        "constraints": [c.name for c in spec.constraints],
        "best": best,
        "hypervolume_normalised": hv,
        "sensitivity": sens,
        "seconds": round(seconds, 3),
        "evaluator": evaluator_name(),
        "files": files,
    }
    if extra:
        summary |= extra
    write_text_atomic(run / "summary.json", jsonout.dumps(summary, indent=2))
    return summary


# ---------------------------------------------------------------------------------- designs back
def load_results(run: str | Path):
    import pandas as pd

    p = Path(run) / "results.parquet"
    if not p.exists():
        raise RomsimInputError("run", str(run), "has no results.parquet (not a finished sweep)")
    return pd.read_parquet(p)


def parse_ref(ref: str, flag: str) -> tuple[Path, str]:
    run, sep, did = ref.rpartition(":")
    if not sep or not run or not did:
        raise RomsimInputError(flag, ref, "must be RUN:ID (a run folder and a design_id)")
    return Path(run), did


def design_from_ref(ref: str, flag: str = "--design"):
    """(model, chip, prompt_len, gen_len, row) of design ``RUN:ID``: the run's base chip plus
    the row's parameters."""
    from romsim.config import chip_from_dict
    from romsim.modelspec import load_model

    run, did = parse_ref(ref, flag)
    df = load_results(run)
    rows = df[df["design_id"] == did]
    if rows.empty:
        raise RomsimInputError(flag, ref, f"no design {did!r} in {run}/results.parquet")
    row = rows.iloc[0]
    manifest = json.loads((run / "manifest.json").read_text())
    base = chip_from_dict(json.loads((run / "base_chip.json").read_text()), source=str(run))
    axes = manifest["axes"]
    over = {k: _native(row[k]) for k in axes if k != "model" and k not in WORKLOAD_KEYS}
    model_name = row["model"] if "model" in axes else _spec_model(run, base)
    over["model"] = model_name
    over["name"] = f"{base.name}:{did}"
    chip = base.with_overrides(**over)
    pl = (
        int(row["workload.prompt_len"]) if "workload.prompt_len" in axes else _spec_workload(run)[0]
    )
    gl = int(row["workload.gen_len"]) if "workload.gen_len" in axes else _spec_workload(run)[1]
    return load_model(model_name), chip, pl, gl, row


def _spec_of(run: Path):
    from romsim.explore.spec import spec_from_text

    return spec_from_text(
        (run / "spec.toml").read_text(), source=str(run / "spec.toml"), spec_dir=run
    )


def _spec_model(run: Path, base) -> str:
    import tomllib

    return tomllib.loads((run / "spec.toml").read_text()).get("model") or base.model


def _spec_workload(run: Path) -> tuple[int, int]:
    import tomllib

    w = tomllib.loads((run / "spec.toml").read_text()).get("workload", {})
    return int(w.get("prompt_len", 128)), int(w.get("gen_len", 128))


def chip_toml(chip, prompt_len: int, gen_len: int, did: str) -> str:
    """A chip TOML that ``romsim estimate --config`` loads back to the same chip."""
    import tomli_w

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if v is not None}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return x

    head = (
        f"# romsim explore design {did}\n"
        f"# reproduce: romsim estimate --config <this file> --prompt-len {prompt_len} --gen-len {gen_len}\n"
    )
    return head + tomli_w.dumps(strip(chip.model_dump()))
