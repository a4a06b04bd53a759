"""bench/bench_fl_decide.py's pure parts: intervals, paired tests, verdicts, the run plan and
the tables (no FL runs)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def D():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_fl_decide", BENCH / "bench_fl_decide.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_ci_matches_t_interval(D):
    m, half, n = D.mean_ci([0.5, 0.6, 0.7])
    assert n == 3 and m == pytest.approx(0.6)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert D.t_quantile(2) == pytest.approx(4.302653, rel=1e-5)
    m1, h1, n1 = D.mean_ci([0.4, None, float("nan")])  # non-finite values are dropped
    assert (m1, n1) == (0.4, 1) and math.isnan(h1)
    assert D.mean_ci([])[2] == 0


def test_paired_t(D):
    r = D.paired_t([0.7, 0.8, 0.9], [0.6, 0.7, 0.7])
    assert r["n"] == 3 and r["diff"] == pytest.approx(2 / 15)
    from scipy.stats import ttest_rel

    assert r["p"] == pytest.approx(ttest_rel([0.7, 0.8, 0.9], [0.6, 0.7, 0.7]).pvalue)
    same = D.paired_t([0.5, 0.6], [0.5, 0.6])
    assert same["diff"] == 0 and same["p"] == 1.0
    assert math.isnan(D.paired_t([0.5], [0.4])["half"])


def test_mcnemar_pooled_and_per_seed(D):
    assert D.discordant("1100", "1010") == (1, 1)
    r = D.pooled_mcnemar([("1111", "0000"), ("1100", "1000")])
    assert (r["b"], r["c"]) == (5, 0)
    assert r["p"] == pytest.approx(2 / 2**5)
    assert r["per_seed"][0][:2] == [4, 0] and r["per_seed"][1][:2] == [1, 0]
    with pytest.raises(ValueError):
        D.discordant("10", "101")


def test_clopper_pearson_and_binomial_width(D):
    lo, hi = D.clopper_pearson(0, 270)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 270), rel=1e-6)
    lo, hi = D.clopper_pearson(5, 10)
    assert lo < 0.5 < hi and lo == pytest.approx(1 - hi)
    assert D.binom_half(400) == pytest.approx(0.049)  # the brief's ±4.9 points


def test_goal_verdict(D):
    ok = {"diff": -0.005, "half": 0.01, "p": 0.5}
    assert D.goal_verdict(ok, bsr_hi=0.03, bsr_lo=0.0) == "met"
    assert D.goal_verdict(ok, bsr_hi=None, bsr_lo=None) == "met"  # a Byzantine attack
    assert D.goal_verdict(ok, bsr_hi=0.2, bsr_lo=0.01) == "undecided"
    assert D.goal_verdict(ok, bsr_hi=0.9, bsr_lo=0.6) == "missed"
    assert D.goal_verdict({"diff": -0.1, "half": 0.02, "p": 0.0}, None, None) == "missed"
    assert D.goal_verdict({"diff": 0.0, "half": 0.05, "p": 1.0}, None, None) == "undecided"
    assert D.goal_verdict({"diff": 0.0, "half": float("nan"), "p": 1.0}, 0, 0) == "undecided"


def test_plan_shares_reference_runs(D):
    g = D.GRIDS["small"]
    keys = {q: {D.run_key(s, 0) for s in D.plan(q, g)} for q in "abc"}
    clean = "s0-iid-fedavg-uniform-none-none"
    assert all(clean in keys[q] for q in "abc")  # a's FedAvg = b's clean = c's TraMark off
    assert "s0-iid-fedra-uniform-none-none" in keys["a"]
    for q in "abc":  # one folder per spec
        assert len(keys[q]) == len(D.plan(q, g))
    for q in "abc":
        for s in D.plan(q, D.GRIDS["complete"]):
            assert D.run_cost("full", s) > 0 and D.run_cost("ci", s) > 0


def test_final_items_skip_the_fisher_set(D):
    sz = {"eval_examples": 4, "fim_samples": 3, "final_items": 10}
    idx = D.final_item_indices(sz)
    assert idx == [0, 1, 2, 3, 7, 8, 9, 10, 11, 12]
    for scale, s in D.SIZING.items():  # fits in the test split the configs ask for
        assert max(D.final_item_indices(s)) < s["final_items"] + s["fim_samples"], scale


def _rows(acc: float, **extra) -> list[dict]:
    base = {"accuracy": 0.5, "eval_loss": 2.0, "sim_time_s": 0.0, "energy_j": 0.0,
            "bytes_up": 0.0, "trained_layers_mean": 0.0, "host_wall_s": 0.0,
            "backdoor_success": None, "detect_precision": None, "detect_recall": None}  # fmt: skip
    last = {**base, "accuracy": acc, "sim_time_s": 3.0, "energy_j": 1.5, "bytes_up": 2e6,
            "trained_layers_mean": 4.0, "eval_loss": 1.0, **extra}  # fmt: skip
    return [base, {**last, **{k: v for k, v in extra.items() if k.startswith("detect")}}, last]


def _rec(D, s: dict, seed: int, bits: str, **kw) -> dict:
    items = {"layout": f"L{seed}", "n": len(bits), "correct": bits}
    items.update(kw.pop("items", {}))
    return {"key": D.run_key(s, seed), "seed": seed, **s, "wall_s": 1.0, "items": items,
            "rounds": _rows(bits.count("1") / len(bits), **kw)}  # fmt: skip


def test_tables_render_and_json_is_strict(D, tmp_path):
    g = {**D.GRIDS["small"], "a_partitions": ("iid",), "b_partitions": ("iid",),
         "a_methods": ("FedAvg (homogeneous)", "FedRA (random)", "Fed-piLot"),
         "b_defenses": ("none", "alignins"), "c_partitions": ("iid",)}  # fmt: skip
    st, pat = D.BASE_STRATEGY
    recs = []
    for seed, (x, y, z) in enumerate([("11110000", "11000000", "11111100"),
                                      ("11100000", "10000000", "11111000"),
                                      ("11110000", "11100000", "11111110")]):  # fmt: skip
        recs += [_rec(D, D.spec("iid", st, pat), seed, x),
                 _rec(D, D.spec("iid", "fedra", "uniform"), seed, y),
                 _rec(D, D.spec("iid", "fed-pilot", "triangle"), seed, z),
                 _rec(D, D.spec("iid", st, pat, "backdoor", "none"), seed, y,
                      backdoor_success=1.0, items={"backdoor": "1111111"}),
                 _rec(D, D.spec("iid", st, pat, "backdoor", "alignins"), seed, x,
                      detect_precision=0.5, detect_recall=1.0,
                      items={"backdoor": "0" * 120}),
                 _rec(D, D.spec("iid", st, pat, tramark=True), seed, x,
                      trace_rate=1.0, wm_success=1.0, wm_cross=0.2, wm_main_acc=0.4,
                      wm_acc_cost=0.1, tramark_s=2.0,
                      items={"personalized": [x, y, x, y, x]})]  # fmt: skip
    md_a, stats_a = D.table_a(recs, g)
    assert md_a.count("\n") == 2 + 3 and "| iid | Fed-piLot | 3 |" in md_a
    pilot = next(r for r in stats_a if r["method"] == "Fed-piLot")
    assert pilot["vs_FedRA"]["mcnemar"]["b"] == 4 + 4 + 4 and pilot["vs_FedRA"]["mcnemar"]["c"] == 0
    assert pilot["vs_FedRA"]["t"]["diff"] == pytest.approx(0.5)
    md_b, stats_b = D.table_b(recs, g)
    assert "| iid | clean | none | 3 |" in md_b
    assert "| missed |" in md_b  # backdoor success 1 without a defense
    ali = next(r for r in stats_b if r["defense"] == "alignins")
    assert ali["goal"] == "met" and ali["backdoor"]["k"] == 0 and ali["backdoor"]["n"] == 360
    md_c, stats_c = D.table_c(recs, g, n_clients=5)
    assert "15/15" in md_c and "| iid | on | 3 |" in md_c
    on = stats_c[-1]
    pers = (3 * 4 + 2 * 2) / 40, (3 * 3 + 2 * 1) / 40, (3 * 4 + 2 * 3) / 40
    off = 0.5, 3 / 8, 0.5
    assert on["cost"]["diff"] == pytest.approx(
        sum(p - o for p, o in zip(pers, off, strict=True)) / 3
    )
    # the JSON written beside the docs is strict (no NaN) and the tables land between markers
    doc_root = tmp_path
    (doc_root / "docs").mkdir()
    for f, tags in (("federated.md", ["a"]), ("robust.md", ["b", "c"])):
        text = "head\n" + "".join(f"<!-- fl-decide-{t}:start -->\nold\n<!-- fl-decide-{t}:end -->\n"
                                  for t in tags) + "tail\n"  # fmt: skip
        (doc_root / "docs" / f).write_text(text)
    for q in "abc":
        D.write_outputs(q, "ci", [0, 1, 2], "small", g, recs, tmp_path / "res", True, doc_root)
        out = (tmp_path / "res" / f"fl_decide_{q}_ci.json").read_text()
        d = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
        assert d["question"] == q and len(d["runs"]) == len(recs)
        assert all("mean" in r["accuracy"] for r in d["stats"])
    rob = (doc_root / "docs" / "robust.md").read_text()
    assert "old" not in rob and rob.startswith("head\n") and rob.endswith("tail\n")
    assert rob.count("| partition |") == 2
    fed = (doc_root / "docs" / "federated.md").read_text()
    assert "| Fed-piLot |" in fed and "±" in fed


def test_sizing_note_states_the_widths(D):
    note = D.sizing_note("full", [0, 1, 2], "small")
    n = D.SIZING["full"]["final_items"]
    assert f"±{100 * D.binom_half(n):.1f} points per run" in note
    assert f"±{100 * D.binom_half(3 * n):.1f} pooled over 3 seed(s)" in note
