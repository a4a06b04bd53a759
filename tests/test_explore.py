"""romsim explore: sweep specs, grid runs (chunks, resume, Ray), Pareto flags, search, outputs,
and designs carried back to `romsim estimate`. Tiny grids (<= 200 designs) only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from romsim.cli import main
from romsim.explore.run import pareto_flags, run_grid
from romsim.explore.spec import spec_from_text

ROOT = Path(__file__).resolve().parents[1]

TINY = """
base = "roma-3b-w4"
[workload]
prompt_len = 64
gen_len = 32
[axes]
"cell.cells_per_unit" = [64, 96, 128]
"rom.macro_rows" = {lin = [8192, 12288, 3]}
quant = ["w4g128", "w2g128"]
"tech.clock_hz" = {log = [2.5e8, 1e9, 3]}
[[constraints]]
fits_rom = true
[[constraints]]
field = "area_mm2"
op = "<="
value = 700
[[objectives]]
field = "decode_tokens_per_s"
[[objectives]]
field = "energy_per_token_mj"
[[objectives]]
field = "area_mm2"
[search]
chunk_size = 20
"""  # 54 designs, 3 chunks


def _spec(text: str = TINY, tmp: Path | None = None):
    return spec_from_text(text, source="tiny.toml", spec_dir=tmp)


def _run(tmp_path: Path, name: str, **kw) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / name
    s = run_grid(_spec(), str(out), progress=False, **kw)
    return s, pd.read_parquet(out / "results.parquet")


def _err(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("romsim: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------- bad specs
BAD = [
    ('"cell.cellz_per_unit" = [1]', "unknown axis key", "cell.cells_per_unit"),
    ('"rom.macro_rows" = {lin = [4096, 1024, 3]}', "start must be < stop", "axes.rom.macro_rows"),
    ('"rom.macro_rows" = {log = [0, 1024, 3]}', "start > 0", "log"),
    ('"rom.macro_rows" = {lin = [1, 2]}', "[start, stop, n]", "lin"),
    ('"rom.macro_rows" = {lin = [1024, 4096, 0]}', "n must be", "lin"),
    ('"rom.macro_rows" = []', "at least one value", "rom.macro_rows"),
    ('"rom.style" = ["brom", "flash"]', "must be one of", "flash"),
    ('"tech.process_nm" = [4]', "technology table", "process_nm"),
]


@pytest.mark.parametrize(("axis", "rule", "named"), BAD)
def test_bad_axis_is_one_line(tmp_path, capsys, axis, rule, named):
    p = tmp_path / "bad.toml"
    p.write_text(f'base = "roma-3b-w4"\n[axes]\n{axis}\n')
    err = _err(capsys, ["explore", "--spec", str(p), "--out", str(tmp_path / "o")])
    assert rule in err and named in err
    assert not (tmp_path / "o").exists()


BAD_TABLES = [
    (
        '[[constraints]]\nfield = "area"\nop = "<="\nvalue = 1',
        "constraints[0].field",
        "unknown field",
    ),
    ('[[constraints]]\nfield = "area_mm2"\nop = "<"\nvalue = 1', "constraints[0].op", "'<='"),
    ('[[objectives]]\nfield = "speed"', "objectives.0.field", "unknown field"),
    ('[[objectives]]\nfield = "area_mm2"\nsense = "minimize"', "objectives.0.sense", "'min'"),
    ('[search]\nmethod = "annealing"', "search.method", "grid"),
    ("[search]\npopulation = 1", "search.population", "greater than or equal to 2"),
    ("[frobnicate]\nx = 1", "frobnicate", "unknown key"),
]


@pytest.mark.parametrize(("table", "field", "rule"), BAD_TABLES)
def test_bad_table_is_one_line(tmp_path, capsys, table, field, rule):
    p = tmp_path / "bad.toml"
    p.write_text(f'base = "roma-3b-w4"\n[axes]\nquant = ["w4g128"]\n{table}\n')
    err = _err(capsys, ["explore", "--spec", str(p), "--out", str(tmp_path / "o")])
    assert field in err and rule in err, err


def test_empty_axes_and_missing_spec(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text('base = "roma-3b-w4"\n[axes]\n')
    assert "needs at least one axis" in _err(capsys, ["explore", "--spec", str(p), "--out", "x"])
    p.write_text('base = "roma-3b-w4"\n')
    assert "axes" in _err(capsys, ["explore", "--spec", str(p), "--out", "x"])
    assert "no such file" in _err(
        capsys, ["explore", "--spec", str(tmp_path / "nope.toml"), "--out", "x"]
    )


def test_ranges_and_nested_keys():
    s = _spec(
        'base = "roma-3b-w4"\n[axes]\ncell.cells_per_unit = {lin = [64, 128, 3]}\n'
        '"tech.clock_hz" = {log = [1e8, 1e9, 2]}\n'
    )
    a, b = s.axes
    assert a.key == "cell.cells_per_unit" and a.values == (64, 96, 128)
    assert all(isinstance(v, int) for v in a.values)
    assert b.values == pytest.approx((1e8, 1e9))
    assert s.grid_size == 6


# ------------------------------------------------------------------------------- Pareto
def _brute_force(costs: np.ndarray) -> np.ndarray:
    n = len(costs)
    out = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i != j and (costs[j] <= costs[i]).all() and (costs[j] < costs[i]).any():
                out[i] = False
                break
    return out


def test_pareto_flags_equal_brute_force(tmp_path):
    spec = _spec()
    s, df = _run(tmp_path, "run")
    assert s["grid_size"] == 54 and len(df) == 54
    feas = df["feasible"].to_numpy()
    costs = np.stack(
        [-df["decode_tokens_per_s"], df["energy_per_token_mj"], df["area_mm2"]], axis=1
    ).astype(float)
    expect = np.zeros(len(df), dtype=bool)
    expect[feas] = _brute_force(costs[feas])
    assert (df["pareto"].to_numpy() == expect).all()
    assert expect.sum() == s["front_size"] > 0
    # random data, ties included
    rng = np.random.default_rng(0)
    r = pd.DataFrame(rng.integers(0, 6, size=(150, 3)).astype(float), columns=["a", "b", "c"])
    r["feasible"] = rng.random(150) > 0.2
    objs = [type("O", (), {"field": f, "resolved_sense": "min"})() for f in "abc"]
    want = np.zeros(150, dtype=bool)
    want[r["feasible"]] = _brute_force(r[["a", "b", "c"]].to_numpy()[r["feasible"]])
    assert (pareto_flags(r, objs) == want).all()
    assert spec.grid_size == 54


def test_grid_outputs(tmp_path):
    s, df = _run(tmp_path, "run")
    run = tmp_path / "run"
    for f in (
        "results.parquet",
        "front.png",
        "front.html",
        "sensitivity.png",
        "summary.json",
        "spec.toml",
    ):
        assert (run / f).is_file(), f
    summary = json.loads((run / "summary.json").read_text())  # strict JSON
    assert summary["stored"] == "all" and summary["evaluated"] == 54
    assert sum(summary["pruned_by_constraint"].values()) == 54 - summary["feasible"]
    assert set(summary["best"]) == {"decode_tokens_per_s", "energy_per_token_mj", "area_mm2"}
    assert summary["sensitivity"]["objectives"]["decode_tokens_per_s"]["axes"]
    assert df["design_id"].is_unique and {"slack.area_mm2<=700", "removed_by"} <= set(df.columns)
    assert (df.loc[~df["feasible"], "removed_by"] != "").all()
    html = (run / "front.html").read_text()
    assert 'src="https://cdn.plot.ly' not in html and '<script src="http' not in html
    assert "plotly.js" in html and len(html) > 1_000_000  # the bundle is inline
    assert (run / "spec.toml").read_text() == TINY


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    _, full = _run(tmp_path, "full")
    out = tmp_path / "killed"
    assert run_grid(_spec(), str(out), progress=False, stop_after_chunks=1) is None
    assert len(list((out / "chunks").glob("*.parquet"))) == 1
    with pytest.raises(Exception, match="--resume"):
        run_grid(_spec(), str(out), progress=False)
    run_grid(_spec(), str(out), resume=True, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), full)
    other = _spec(TINY.replace("value = 700", "value = 650"))
    with pytest.raises(Exception, match="different spec"):
        run_grid(other, str(out), resume=True, progress=False)


def test_ray_local_equals_in_process(tmp_path):
    pytest.importorskip("ray")
    import ray

    _, local = _run(tmp_path, "local")
    try:
        _, remote = _run(tmp_path, "ray", ray_address="local")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    pd.testing.assert_frame_equal(remote, local)


# ------------------------------------------------------------------------------- back to estimate
def _estimate_json(capsys, argv: list[str]) -> dict:
    assert main(["estimate", *argv, "--json", "--allow-unfit"]) == 0
    return json.loads(capsys.readouterr().out)


def test_design_reproduces_row_and_export(tmp_path, capsys):
    _, df = _run(tmp_path, "run")
    row = df[df["pareto"]].iloc[0]
    ref = f"{tmp_path / 'run'}:{row['design_id']}"
    est = _estimate_json(capsys, ["--design", ref])
    for f in ("decode_tokens_per_s", "ttft_s", "energy_per_token_j", "area_mm2", "power_w"):
        assert est[f] == pytest.approx(row[f], rel=1e-9), f
    chip = tmp_path / "chip.toml"
    assert main(["explore", "export", ref, "--out", str(chip)]) == 0
    capsys.readouterr()
    est2 = _estimate_json(capsys, ["--config", str(chip), "--prompt-len", "64", "--gen-len", "32"])
    for f in ("decode_tokens_per_s", "ttft_s", "energy_per_token_j", "area_mm2", "power_w"):
        assert est2[f] == pytest.approx(row[f], rel=1e-9), f
    assert "romsim: error:" in _err(capsys, ["estimate", "--design", f"{tmp_path / 'run'}:nope"])
    assert main(["explore", "show", str(tmp_path / "run"), "--top", "3", "--by", "area_mm2"]) == 0
    assert "design_id" in capsys.readouterr().out


# ------------------------------------------------------------------------------- search
def test_nsga2_reports_hypervolume(tmp_path):
    from romsim.explore.search import run_nsga2

    text = TINY.replace(
        "[search]\nchunk_size = 20",
        '[search]\nmethod = "nsga2"\npopulation = 8\ngenerations = 4\nseed = 3',
    )
    s = run_nsga2(_spec(text), str(tmp_path / "ga"))
    hist = s["hypervolume_vs_evaluations"]
    assert len(hist) == 4 and hist[0]["evaluations"] == 8
    hv = [h["hypervolume"] for h in hist]
    assert hv == sorted(hv) and hv[-1] > 0  # cumulative front: never shrinks
    assert s["search"]["evaluator_calls"] == 4  # one batched call per generation
    assert (tmp_path / "ga" / "hypervolume.png").is_file()


def test_optuna_ask_and_tell(tmp_path):
    from romsim.explore.search import run_optuna

    text = TINY.replace(
        "[search]\nchunk_size = 20",
        f'[search]\nmethod = "optuna"\ntrials = 24\nbatch = 8\nstorage = "sqlite:///{tmp_path}/o.db"',
    )
    s = run_optuna(_spec(text), str(tmp_path / "opt"))
    assert s["search"]["evaluations"] == 24 and len(s["hypervolume_vs_evaluations"]) == 3
    assert (tmp_path / "o.db").is_file()


def test_help_stays_light():
    code = (
        "import sys; from romsim.cli import build_parser; build_parser(); "
        "bad = [m for m in ('pyarrow', 'plotly', 'matplotlib', 'ray', 'pymoo', 'optuna', 'pandas') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_front_html_renders_offline_in_a_real_browser(tmp_path):
    """The interactive front is a web page: headless Chromium (Debian's, installed by the
    set-up) loads it with every network name unresolvable, plotly draws the plot (its SVG
    layers exist in the live DOM) and the page logs no error."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium (scripts/setup.sh installs it)")
    _run(tmp_path, "run")
    page = (tmp_path / "run" / "front.html").as_uri()
    flags = [
        browser, "--headless=new", "--no-sandbox", "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: a CDN fetch would fail
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    res = subprocess.run(
        [*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert "main-svg" in dom and ("scatterlayer" in dom or "gl-container" in dom), dom[:500]
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    errors = [
        ln
        for ln in console
        if any(w in ln for w in ("Uncaught", "Error", "Failed to load", "ERR_"))
        and "GL Driver Message" not in ln
    ]
    assert not errors, errors
