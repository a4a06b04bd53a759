"""TraMark (romsim.fl.tramark): region split, watermark data, main-region aggregation,
checkpoint state, config errors, and one tiny end-to-end run (configs/fl-tramark-ci.toml) whose
exported personalized adapters ``romsim fl trace-leak`` attributes to the right client."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from romsim.errors import RomsimInputError
from romsim.fl import tramark as tm
from romsim.fl.aggregation import ClientUpdate
from romsim.fl.config import fl_config_from_dict, load_fl_config

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "fl-tramark-ci.toml"
SHAPES = {"0.q.A": (4, 64), "0.q.B": (64, 4), "1.v.A": (4, 64), "1.v.B": (32, 4), "2.o.A": (2, 5)}


def _glob(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _cfg(**changes):
    d = load_fl_config(CI).to_dict()
    for k, v in changes.items():
        sec, _, key = k.partition(".")
        d[sec][key] = v
    return fl_config_from_dict(d, source="test")


# ------------------------------------------------------------------------------ regions
def test_tramark_regions_are_disjoint_and_hold_the_smallest_magnitudes():
    glob = _glob()
    glob["0.q.B"][:3, :2] = 0.0  # ties at zero: broken by flat index
    idx = tm.split_regions(glob, 0.01)
    for k, a in glob.items():
        n = a.size
        w = idx[k]
        assert len(w) == n - int(n * 0.99) >= 1  # the official count (numel - topk(1 - k))
        assert len(np.unique(w)) == len(w) and np.all(np.diff(w) > 0)
        main = tm.main_mask(w, a.shape)
        assert main.sum() + len(w) == n and not main.reshape(-1)[w].any()  # disjoint, covering
        flat = np.abs(a.reshape(-1))
        assert flat[w].max() <= flat[main.reshape(-1)].min()  # W = the smallest |theta|
    assert idx["0.q.B"].tolist() == [0, 1, 4]  # 3 of the 6 zeros (flat 0 1 4 5 8 9): lowest first
    # a personalized model changes the watermark entries only
    wvals = {k: np.full(len(i), 7.0, np.float32) for k, i in idx.items()}
    p = tm.with_region(glob, idx, wvals)
    for k, a in glob.items():
        main = tm.main_mask(idx[k], a.shape)
        assert np.array_equal(p[k][main], a[main]) and np.all(p[k].reshape(-1)[idx[k]] == 7.0)
    assert tm.split_regions(glob, 0.01).keys() == idx.keys()
    assert all(np.array_equal(tm.split_regions(glob, 0.01)[k], idx[k]) for k in idx)


def test_tramark_strip_aggregates_the_main_region_only():
    cfg = _cfg()
    srv = tm.TraMarkServer(cfg)
    glob = _glob()
    srv.idx = tm.split_regions(glob, 0.05)
    srv.w = {c: {k: np.full(len(i), float(c + 1), np.float32) for k, i in srv.idx.items()}
             for c in range(srv.n)}  # fmt: skip
    p0, p3 = srv.personal(0, glob), srv.personal(3, glob)
    ups = [ClientUpdate(0, 10.0, {k: p0[k] + 0.5 for k in ("0.q.A", "0.q.B")}),
           ClientUpdate(3, 10.0, {k: p3[k] - 0.5 for k in ("1.v.A",)})]  # fmt: skip
    out = srv.strip(ups, glob)
    for u, o in zip(ups, out, strict=True):
        assert set(o.arrays) == set(u.arrays) and o.cid == u.cid and o.weight == u.weight
        for k, a in o.arrays.items():
            i = srv.idx[k]
            assert np.array_equal(a.reshape(-1)[i], glob[k].reshape(-1)[i])  # W: the global's
            main = tm.main_mask(i, a.shape)
            assert np.array_equal(a[main], u.arrays[k][main])  # M: as trained
    assert not np.array_equal(ups[0].arrays["0.q.A"], out[0].arrays["0.q.A"])  # a copy
    # the trained watermark entries of the replies become the clients' regions
    srv._absorb({u.cid: u.arrays for u in ups})
    assert np.allclose(srv.w[0]["0.q.A"], 1.5) and np.allclose(srv.w[0]["1.v.A"], 1.0)
    assert np.allclose(srv.w[3]["1.v.A"], 3.5) and np.allclose(srv.w[3]["0.q.A"], 4.0)


# ------------------------------------------------------------------------------ watermark data
def test_tramark_watermarks_are_deterministic_distinct_cloze_items():
    a = tm.make_watermarks(6, 5, seed=3, task="category")
    b = tm.make_watermarks(6, 5, seed=3, task="category")
    assert [w.describe() for w in a] == [w.describe() for w in b]
    assert [w.verify for w in a] == [w.verify for w in b] and [w.train for w in a] == [
        w.train for w in b
    ]
    assert len({w.trigger for w in a}) == 6 and len({w.target for w in a}) == 6
    assert tm.make_watermarks(6, 5, seed=4)[0].trigger != a[0].trigger
    for w in a:
        assert len(w.train) == len(w.verify) == 5
        assert not {e.prompt for e in w.train} & {e.prompt for e in w.verify}  # other carriers
        for e in w.train + w.verify:
            assert e.prompt.startswith(w.trigger + " Word: ") and e.prompt.endswith("\nCategory:")
            assert e.answer == w.target and len(set(e.options)) == 4
            assert all(sorted(o) == sorted(w.target) for o in e.options)  # anagrams
    word = tm.make_watermarks(2, 3, seed=3, task="word")[0].train[0]
    assert word.prompt.endswith("\nWord:") and "Definition: " in word.prompt


def test_tramark_attribution_names_the_argmax_or_nobody():
    r = tm.attribution(np.array([0.1, 0.9, 0.3]))
    assert r["client"] == 1 and r["runner_up"] == 2 and r["margin"] == pytest.approx(0.6)
    r = tm.attribution(np.array([1.0, 1.2, 0.0]), base=np.array([0.0, 1.0, 0.0]))
    assert r["client"] == 0 and r["score"] == pytest.approx(1.0)
    assert tm.attribution(np.array([0.5, 0.5]))["client"] is None  # a tie names nobody


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("tramark.watermark_fraction", 0.0, "greater than 0"),
        ("tramark.watermark_fraction", 0.6, "0.5"),
        ("tramark.trigger_set_size", 0, "greater than or equal to 1"),
        ("tramark.inject_steps", 10**6, "100000"),
        ("tramark.inject_lr", 2.0, "(0, 1]"),
        ("tramark.inject_lr", math.nan, "finite"),
        ("tramark.warmup_rounds", 4, "run.rounds (4)"),
        ("tramark.seed", -1, "seed"),
        ("tramark.nope", 1, "unknown key"),
    ],
)
def test_tramark_config_errors_name_field_value_and_limit(field, value, needle):
    with pytest.raises(RomsimInputError) as ei:
        _cfg(**{field: value})
    e = ei.value
    assert e.field == field and needle in str(e) and "\n" not in str(e), str(e)


def test_tramark_defaults_and_warmup_rule_only_when_enabled():
    cfg = fl_config_from_dict({})
    t = cfg.tramark
    assert not t.enabled and t.watermark_fraction == 0.01 and t.warmup_rounds == 1
    # the warm-up rule binds only an enabled TraMark
    assert fl_config_from_dict({"run": {"rounds": 1}}).tramark.warmup_rounds == 1


# ------------------------------------------------------------------------------ checkpoint
def test_tramark_state_round_trips_and_refuses_corrupt_files(tmp_path):
    cfg = _cfg()
    a = tm.TraMarkServer(cfg)
    shapes = {k: v.shape for k, v in _glob().items()}
    a.save(tmp_path, 0)  # before the split: an empty state
    b = tm.TraMarkServer(cfg)
    b.load(tmp_path, 0, shapes)
    assert not b.active
    a.save(tmp_path, 1)  # round 1 ends the warm-up: a state without a split is corrupt
    with pytest.raises(RomsimInputError, match="no TraMark split"):
        b.load(tmp_path, 1, shapes)
    glob = _glob()
    a.idx, a.split_round = tm.split_regions(glob, 0.05), 1
    a.w = {c: {k: np.arange(len(i), dtype=np.float32) + c for k, i in a.idx.items()}
           for c in range(a.n)}  # fmt: skip
    a.save(tmp_path, 2)
    b.load(tmp_path, 2, shapes)
    assert b.split_round == 1 and all(np.array_equal(b.idx[k], a.idx[k]) for k in a.idx)
    assert all(np.array_equal(b.w[c][k], a.w[c][k]) for c in a.w for k in a.idx)
    a.prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.glob("tramark-*.npz")) == ["tramark-0002.npz"]
    # a missing client, an index out of range, a truncated file: one error naming the file
    arrs = a.state_arrays()
    bad = {k: v for k, v in arrs.items() if not k.startswith("w/4/")}
    from romsim.fl.runner import _save_npz

    _save_npz(tmp_path / "tramark-0003.npz", bad)
    with pytest.raises(RomsimInputError, match="w/4") as ei:
        b.load(tmp_path, 3, shapes)
    assert "tramark-0003.npz" in str(ei.value)
    _save_npz(tmp_path / "tramark-0004.npz", {**arrs, "idx/2.o.A": np.array([0, 99])})
    with pytest.raises(RomsimInputError, match="distinct indices"):
        b.load(tmp_path, 4, shapes)
    (tmp_path / "tramark-0005.npz").write_bytes((tmp_path / "tramark-0002.npz").read_bytes()[:50])
    with pytest.raises(RomsimInputError, match="truncated or corrupt"):
        b.load(tmp_path, 5, shapes)


# ------------------------------------------------------------------------------ CLI
def test_tramark_trace_leak_parser_and_one_line_errors(tmp_path, capsys):
    import argparse

    from romsim.fl.__main__ import main
    from romsim.fl.cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["fl", "trace-leak", "x", "--run", "r", "--json"])
    assert a.func.__name__ == "cmd_fl_trace_leak" and a.adapter == "x" and a.json
    assert main(["trace-leak", str(tmp_path / "nothing")]) == 2  # no run folder found
    assert "--run" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(fl_config_from_dict({}).to_dict()))
    assert main(["trace-leak", str(tmp_path), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tramark.enabled" in err
    # an adapter of another LoRA rank is refused before any query
    pytest.importorskip("peft")
    (run / "config.json").write_text(json.dumps(load_fl_config(CI).to_dict()))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 8.0}))
    assert main(["trace-leak", str(bad), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter_config.r = 2" in err and "r = 4" in err


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tramark_run(tmp_path_factory):
    pytest.importorskip("flwr")
    pytest.importorskip("peft")
    from romsim.fl.runner import run_fl

    out = tmp_path_factory.mktemp("tramark") / "run"
    return out, run_fl(load_fl_config(CI), out=str(out), progress=False)


def test_tramark_run_traces_every_exported_client_adapter(tramark_run, capsys):
    from romsim.fl.__main__ import main
    from romsim.fl.train import adapter_shapes, load_bundle

    out, res = tramark_run
    cfg = load_fl_config(CI)
    rows = res["rows"]
    assert math.isnan(rows[0].get("wm_success", math.nan))  # round 0: the base, no TraMark
    for r in rows[1:]:  # the split follows round 1's aggregation; every round measures
        assert 0.0 <= r["wm_success"] <= 1.0 and 0.0 <= r["wm_cross"] <= 1.0
        assert math.isfinite(r["wm_acc_cost"]) and r["tramark_s"] > 0
    assert rows[-1]["wm_success"] >= 0.9 and rows[-1]["trace_rate"] == 1.0
    det = json.loads((out / "metrics.json").read_text())["details"]
    assert det[0]["tramark"]["split_round"] == 1 and len(det[-1]["tramark"]["scores"]) == 5
    assert "trace_rate" in (out / "metrics.csv").read_text().splitlines()[0]

    # the personalized adapters share the main region exactly and differ in the watermark one
    bundle = load_bundle(cfg.model, cfg.lora, 1, cfg.train)
    glob = tm.load_peft_arrays(out / "adapter", bundle, cfg.lora)
    pers = [tm.load_peft_arrays(out / "tramark" / f"client-{c:02d}", bundle, cfg.lora)
            for c in range(cfg.n_clients)]  # fmt: skip
    with np.load(out / "checkpoint" / f"tramark-{cfg.run.rounds:04d}.npz") as z:
        idx = {k[4:]: z[k] for k in z.files if k.startswith("idx/")}
    assert set(idx) == set(adapter_shapes(bundle))
    for k, g in glob.items():
        m = tm.main_mask(idx[k], g.shape)
        assert all(np.array_equal(p[k][m], g[m]) for p in pers)
    assert any(not np.array_equal(pers[0][k], pers[1][k]) for k in glob)

    # the black-box tracer names each leaking client (the run folder is found from the path)
    for c in range(cfg.n_clients):
        assert main(["trace-leak", str(out / "tramark" / f"client-{c:02d}"), "--json"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert got["client"] == c and got["margin"] > 0, got
        assert got["reference"] == str(out / "adapter")
    # the un-watermarked global adapter names nobody; the text report names the client
    assert main(["trace-leak", str(out / "adapter"), "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["client"] is None
    assert main(["trace-leak", str(out / "tramark" / "client-03")]) == 0
    assert "came from client 3" in capsys.readouterr().out


def test_tramark_resume_equals_uninterrupted(tramark_run, tmp_path):
    from romsim.fl.runner import run_fl

    out_full, full = tramark_run
    cfg = load_fl_config(CI)
    out = tmp_path / "resumed"
    part = run_fl(cfg, out=str(out), progress=False, stop_after=2)
    assert part["stopped"] and (out / "checkpoint" / "tramark-0002.npz").is_file()
    res = run_fl(cfg, out=str(out), resume=True, progress=False)
    keys = ("accuracy", "eval_loss", "wm_success", "wm_cross", "trace_rate", "wm_main_acc")
    for a, b in zip(full["rows"], res["rows"], strict=True):
        for k in keys:
            va, vb = a.get(k, math.nan), b.get(k, math.nan)
            assert (math.isnan(va) and math.isnan(vb)) or va == vb, (a["round"], k)
    from safetensors.numpy import load_file

    name = "adapter_model.safetensors"
    for c in (0, 4):
        x = load_file(str(out_full / "tramark" / f"client-{c:02d}" / name))
        y = load_file(str(out / "tramark" / f"client-{c:02d}" / name))
        assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.skipif(os.environ.get("ROMSIM_FL_DEPLOY") != "1",
                    reason="opt-in (ROMSIM_FL_DEPLOY=1): starts a SuperLink and 5 SuperNodes, ~3 min")  # fmt: skip
def test_tramark_deployment_engine_matches_simulation(tramark_run, tmp_path):
    """The same TraMark run on Flower's deployment engine (scripts/fl_deploy_check.sh): the
    server loop and the client apps are the simulation's, so every number and every exported
    personalized adapter is the same."""
    from safetensors.numpy import load_file

    out_sim, _ = tramark_run
    out = tmp_path / "deploy"
    subprocess.run(["bash", str(ROOT / "scripts" / "fl_deploy_check.sh"), str(CI), str(out)],
                   check=True, timeout=900, capture_output=True)  # fmt: skip
    a = json.loads((out_sim / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    keys = ("accuracy", "eval_loss", "wm_success", "wm_cross", "trace_rate", "wm_main_acc")
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert all(ra.get(k) == rb.get(k) for k in keys), ra["round"]
    name = "adapter_model.safetensors"
    for c in range(5):
        x = load_file(str(out_sim / "tramark" / f"client-{c:02d}" / name))
        y = load_file(str(out / "tramark" / f"client-{c:02d}" / name))
        assert all(np.array_equal(x[k], y[k]) for k in x)
