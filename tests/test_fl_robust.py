"""Attacks (romsim.fl.attacks) and defenses (romsim.fl.defenses) on seeded synthetic deltas,
including heterogeneous key sets and the degenerate cases; one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from romsim.errors import RomsimInputError
from romsim.fl import attacks as atk
from romsim.fl import defenses as dfn
from romsim.fl.aggregation import ClientUpdate
from romsim.fl.config import AttackerSection, fl_config_from_dict
from romsim.fl.data import synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"0.q.A": (2, 6), "0.q.B": (5, 2), "1.q.A": (2, 6), "1.q.B": (5, 2)}


def _glob(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _benign(n: int, seed: int = 1, noise: float = 0.05, keys=None, equal_norm: bool = False):
    """n deltas = a shared direction (mostly positive) + small noise."""
    rng = np.random.default_rng(seed)
    keys = list(SHAPES) if keys is None else keys
    base = {k: np.abs(rng.normal(size=SHAPES[k])) + 0.2 for k in keys}
    out = []
    for _ in range(n):
        d = {k: base[k] + noise * rng.normal(size=SHAPES[k]) for k in keys}
        if equal_norm:
            nrm = math.sqrt(sum(float((v**2).sum()) for v in d.values()))
            d = {k: v / nrm for k, v in d.items()}
        out.append(d)
    return out, base


def _updates(glob, deltas, weights=None) -> list[ClientUpdate]:
    w = weights or [10.0] * len(deltas)
    return [
        ClientUpdate(i, w[i], {k: (glob[k] + v).astype(np.float32) for k, v in d.items()})
        for i, d in enumerate(deltas)
    ]


def _delta(res, glob, k):
    return res.arrays[k].astype(np.float64) - glob[k]


# ------------------------------------------------------------------------------ LASA
def test_lasa_rejects_planted_outlier_keeps_benign():
    glob = _glob()
    ben, base = _benign(6, equal_norm=True)
    bad = {k: -v for k, v in ben[0].items()}  # sign-flipped, same norm
    # the sign test alone (λ_n large): with the official λ_n = 1 the per-key norm MZ of pure
    # benign noise exceeds 1 for about a third of the clients (see docs/robust.md)
    res = dfn.lasa(glob, _updates(glob, [*ben, bad]), lambda_n=10.0)
    assert res.flagged == [6]
    assert res.report["kept"] == [0, 1, 2, 3, 4, 5]
    for k, info in res.report["per_key"].items():
        assert 6 not in info["kept"] and len(info["kept"]) == 6, k
    # the aggregate points along the benign direction
    assert all(float((_delta(res, glob, k) * base[k]).sum()) > 0 for k in SHAPES)


def test_lasa_rejects_small_norm_outlier_with_defaults():
    glob = _glob()
    ben, _ = _benign(8, noise=0.01)
    tiny = {k: 1e-3 * v for k, v in ben[0].items()}  # clipping never raises a small norm
    res = dfn.lasa(glob, _updates(glob, [*ben, tiny]))
    assert 8 in res.flagged
    assert all(8 not in info["kept"] for info in res.report["per_key"].values())
    assert all(len(info["kept"]) >= 3 for info in res.report["per_key"].values())


def test_lasa_heterogeneous_keys_two_holders_not_filtered():
    glob = _glob()
    full, _ = _benign(5, equal_norm=True)
    bad = {k: -v for k, v in full[0].items()}
    lite = [{k: d[k] for k in ("1.q.A", "1.q.B")} for d in full[:3]]  # hold layer 1 only
    deltas = [*full[:2], {k: bad[k] for k in SHAPES}, *lite]
    # layer-0 keys: clients 0, 1, 2 (3 holders, client 2 is the outlier); layer 1: all 6
    res = dfn.lasa(glob, _updates(glob, deltas), lambda_n=10.0, min_holders=3)
    assert 2 in res.flagged and set(res.flagged) <= {2}
    assert res.report["clip_scope"] == "key"
    # with min_holders = 4 the layer-0 keys (3 holders) are left unfiltered, said so
    res4 = dfn.lasa(glob, _updates(glob, deltas), min_holders=4)
    assert res4.report["per_key"]["0.q.A"]["kept"] == [0, 1, 2]
    assert "not filtered" in res4.report["per_key"]["0.q.A"]["why"]


def test_lasa_two_holders_nobody_passes_falls_back_to_all():
    """The official pitfall: with 2 values both MZ-scores are exactly 1.0, `< 1.0` rejects both,
    LASA falls back to all holders."""
    glob = _glob()
    ben, _ = _benign(2, seed=3)
    res = dfn.lasa(glob, _updates(glob, ben), min_holders=2)
    infos = res.report["per_key"].values()
    assert all(i["mz_norm"] == pytest.approx([1.0, 1.0]) for i in infos)
    # exactly 1.0 -> nobody passes -> all holders; in floating point one score can come out
    # as 1 - 1e-16 and pass alone: min_holders = 3 (the default) avoids both outcomes
    assert any("fall back" in i.get("why", "") and i["kept"] == [0, 1] for i in infos)
    assert all(len(i["kept"]) >= 1 for i in infos)


def test_lasa_std_zero_all_pass():
    glob = _glob()
    ben, _ = _benign(1, equal_norm=True)
    res = dfn.lasa(glob, _updates(glob, [ben[0]] * 4))
    assert res.flagged == [] and res.report["kept"] == [0, 1, 2, 3]
    assert "std = 0" in res.report["per_key"]["0.q.A"]["note"]


def test_lasa_sparsifies_top_k_strictly():
    d = {"a": np.arange(1.0, 11.0).reshape(2, 5)}
    out = dfn.top_k_sparsify(d, 0.3)  # keep int(10 * 0.7) = 7 -> |x| > 7th largest (4)
    assert np.count_nonzero(out["a"]) == 6 and out["a"].min() == 0.0


# ------------------------------------------------------------------------------ AlignIns
def test_alignins_rejects_planted_outlier_keeps_benign():
    glob = _glob()
    ben, _ = _benign(7, seed=4)
    bad = {k: -3 * v for k, v in ben[0].items()}
    res = dfn.alignins(glob, _updates(glob, [*ben, bad]))
    assert res.flagged == [7]
    assert res.report["kept"] == list(range(7))
    assert res.report["mpsa"]["7"] < 0.1 < 0.9 < min(res.report["mpsa"][str(i)] for i in range(7))
    # post-filter clipping: no benign key delta exceeds the median benign norm
    assert np.isfinite(res.report["clip_norm"])


def test_alignins_nobody_passes_gives_zero_update():
    glob = _glob()
    ben, _ = _benign(2, seed=5)
    neg = {k: -v for k, v in ben[0].items()}
    deltas = [ben[0], ben[0], neg, neg]  # TDA = [t, t, -t, -t]: MZ = 1.0 for all four
    res = dfn.alignins(glob, _updates(glob, deltas))
    assert res.report["kept"] == [] and sorted(res.flagged) == [0, 1, 2, 3]
    assert "zero update" in res.report["fallback"]
    assert all(np.array_equal(res.arrays[k], glob[k]) for k in SHAPES)


def test_alignins_heterogeneous_keys_and_two_clients():
    glob = _glob()
    ben, _ = _benign(6, seed=6)
    deltas = [ben[i] if i < 3 else {k: ben[i][k] for k in ("1.q.A", "1.q.B")} for i in range(6)]
    deltas.append({k: -2 * ben[0][k] for k in ("1.q.A", "1.q.B")})
    res = dfn.alignins(glob, _updates(glob, deltas))
    assert res.flagged == [6] and res.report["clip_scope"] == "key"
    assert res.counts["0.q.A"] == 3 and res.counts["1.q.A"] == 6
    two = dfn.alignins(glob, _updates(glob, ben[:2]))
    assert two.flagged == [] and "not filtered" in two.report["why_all"]


# ------------------------------------------------------------------------------ MASA
def test_masa_flags_high_unlearning_loss_and_fuses():
    glob = _glob()
    ben, _ = _benign(5, seed=7)
    bad = {k: 5 * v for k, v in ben[0].items()}
    seen = []

    def unlearn(arrays):  # a stand-in for the server-side gradient ascent: loss ~ |fused - glob|
        seen.append(arrays)
        return float(sum(np.abs(arrays[k] - glob[k]).sum() for k in SHAPES))

    ups = _updates(glob, [*ben, bad])
    res = dfn.masa(glob, ups, unlearn, fusion_lambda=0.7, delta=1.0)
    assert res.flagged == [5] and res.report["kept"] == [0, 1, 2, 3, 4]
    mean = {k: np.mean([d[k] for d in [*ben, bad]], axis=0) for k in SHAPES}
    want = glob["0.q.A"] + 0.7 * ben[1]["0.q.A"] + 0.3 * mean["0.q.A"]
    np.testing.assert_allclose(seen[1]["0.q.A"], want, rtol=1e-5, atol=1e-5)
    # std = 0: all equal losses, all pass
    res0 = dfn.masa(glob, ups, lambda a: 1.0)
    assert res0.flagged == [] and "std = 0" in res0.report["note"]


def test_masa_unlearn_loss_gradient_ascent_on_tiny_model():
    pytest.importorskip("peft")
    from romsim.fl.config import LoraSection, ModelSection
    from romsim.fl.train import adapter_shapes, init_adapter, load_bundle, set_adapter, unlearn_loss

    b = load_bundle(ModelSection(gguf="tiny", tiny_layers=2), LoraSection(rank=2, alpha=4.0), 1)
    glob = init_adapter(adapter_shapes(b), 0)
    aux = synthetic_dataset(8, 4, 0).train
    set_adapter(b, glob)
    l1 = unlearn_loss(b, aux, epochs=1, batch=4, lr=1e-3, seed=0)
    set_adapter(b, glob)
    l3 = unlearn_loss(b, aux, epochs=3, batch=4, lr=1e-3, seed=0)
    assert math.isfinite(l1) and l3 > 2 * l1  # a sum over epochs of a rising (ascended) loss


# ------------------------------------------------------------------------------ baselines
def _with_outlier(n=6, seed=8, scale=50.0, keys=None):
    glob = _glob()
    ben, base = _benign(n, seed=seed, keys=keys)
    bad = {k: -scale * v for k, v in ben[0].items()}
    return glob, [*ben, bad], base


def test_median_matches_numpy_and_ignores_outlier():
    glob, deltas, _ = _with_outlier()
    res = dfn.median(glob, _updates(glob, deltas))
    for k in SHAPES:
        want = np.median(np.stack([d[k] for d in deltas]), axis=0)
        np.testing.assert_allclose(_delta(res, glob, k), want, atol=1e-5)
    assert res.report["impl"] == "flwr (one call)"


def test_median_per_key_on_heterogeneous_keys():
    glob, deltas, _ = _with_outlier()
    deltas[1] = {k: deltas[1][k] for k in ("1.q.A", "1.q.B")}
    res = dfn.median(glob, _updates(glob, deltas))
    assert res.report["impl"] == "flwr (per key)" and res.counts["0.q.A"] == 6
    want = np.median(np.stack([d["0.q.A"] for d in deltas if "0.q.A" in d]), axis=0)
    np.testing.assert_allclose(_delta(res, glob, "0.q.A"), want, atol=1e-5)


def test_trimmed_mean_trims_outlier():
    glob, deltas, base = _with_outlier(n=9)
    res = dfn.trimmed(glob, _updates(glob, deltas), beta=0.2)
    for k in SHAPES:
        assert np.all(_delta(res, glob, k) > 0)  # the -50x outlier is trimmed away
        assert np.abs(_delta(res, glob, k) - base[k]).max() < 0.3


def test_krum_rejects_outlier_and_matches_flower():
    from flwr.server.strategy import aggregate as fa

    glob, deltas, _ = _with_outlier()
    ups = _updates(glob, deltas)
    res = dfn.distance_based(glob, ups, "krum", f=1)
    assert res.report["impl"] == "flwr" and len(res.report["kept"]) == 1
    assert 6 in res.flagged and res.report["kept"][0] < 6
    keys = sorted(SHAPES)
    flw = fa.aggregate_krum(
        [([d[k] for k in keys], 10) for d in dfn.deltas_of(glob, ups).values()], 1, 0
    )
    for k, v in zip(keys, flw, strict=True):
        np.testing.assert_allclose(_delta(res, glob, k), v, atol=1e-5)
    mk = dfn.distance_based(glob, ups, "multikrum", f=1)
    assert mk.report["kept"] == [0, 1, 2, 3, 4, 5] and mk.flagged == [6]


def test_krum_per_key_on_heterogeneous_keys():
    glob, deltas, _ = _with_outlier()
    deltas[0] = {k: deltas[0][k] for k in ("1.q.A", "1.q.B")}
    res = dfn.distance_based(glob, _updates(glob, deltas), "multikrum", f=1)
    assert res.report["impl"] == "per-key (romsim)" and res.flagged == [6]
    assert res.counts["0.q.A"] == 5 and res.counts["1.q.A"] == 6


def test_bulyan_selects_benign_and_falls_back_to_median():
    from flwr.server.strategy import aggregate as fa

    glob, deltas, base = _with_outlier(n=6)  # 7 clients = 4f + 3 for f = 1
    ups = _updates(glob, deltas)
    res = dfn.distance_based(glob, ups, "bulyan", f=1)
    assert res.report["impl"] == "flwr" and 6 in res.flagged and len(res.report["kept"]) == 5
    keys = sorted(SHAPES)
    flw = fa.aggregate_bulyan([([d[k] for k in keys], 10) for d in dfn.deltas_of(glob, ups).values()],
                              1, fa.aggregate_krum, to_keep=0)  # fmt: skip
    for k, v in zip(keys, flw, strict=True):
        np.testing.assert_allclose(_delta(res, glob, k), v, atol=1e-5)
    few = dfn.distance_based(glob, ups[:6], "bulyan", f=1)  # 6 < 7
    assert "median" in few.report["fallback"]
    # per-key Bulyan when the key sets differ
    vecs = np.stack([deltas[i]["0.q.A"].ravel() for i in range(7)])
    np.testing.assert_allclose(
        dfn.bulyan_combine(vecs[dfn.bulyan_select(vecs, 1)], 1).min() > 0, True
    )


def test_detection_precision_recall():
    d = dfn.detection([1, 2], [2, 5], [0, 1, 2, 3, 5])
    assert d == {"precision": 0.5, "recall": 0.5}
    d = dfn.detection([], [2], [0, 2])
    assert math.isnan(d["precision"]) and d["recall"] == 0.0


# ------------------------------------------------------------------------------ attacks
def _att(**kw) -> AttackerSection:
    kw.setdefault("clients", (0,))
    return AttackerSection(**kw)


def test_signflip_attack_negates_delta():
    glob = _glob()
    ben, _ = _benign(3)
    ups = _updates(glob, ben)
    adv = atk.Adversary({0: _att(kind="signflip")}, seed=0)
    out, notes = adv.craft(1, glob, ups, {})
    for k in SHAPES:
        np.testing.assert_allclose(out[0].arrays[k] - glob[k], -ben[0][k], atol=1e-5)
        np.testing.assert_array_equal(out[1].arrays[k], ups[1].arrays[k])
    assert notes == [{"cid": 0, "kind": "signflip"}]
    assert adv.ids(1, [0, 1, 2]) == [0] and adv.ids(0, [0, 1]) == []  # from_round 1


def test_lie_attack_is_mean_minus_z_std():
    glob = _glob()
    ben, _ = _benign(5, noise=0.3)
    ups = _updates(glob, ben)
    adv = atk.Adversary({0: _att(kind="lie", clients=(0, 1), lie_z=1.5)}, seed=0)
    byc = {0: adv.by_cid[0], 1: adv.by_cid[0]}
    adv.by_cid = byc
    out, notes = adv.craft(1, glob, ups, {})
    for k in SHAPES:
        stack = np.stack([d[k] for d in ben])
        want = stack.mean(0) - 1.5 * stack.std(0, ddof=1)
        np.testing.assert_allclose(out[0].arrays[k] - glob[k], want, atol=1e-5)
        np.testing.assert_allclose(out[1].arrays[k], out[0].arrays[k])
    assert notes[0]["z"] == 1.5 and notes[0]["scope"] == "vector"
    # the published z: n = 50, f = 12 -> s = 14, z = Phi^-1(36/50)
    assert atk.lie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)


@pytest.mark.parametrize("mode", ["minmax", "minsum"])
def test_minmax_attack_stays_within_benign_distance(mode):
    rng = np.random.default_rng(9)
    benign = rng.normal(size=(6, 40)) + 1.0
    mal, g = atk.agr_agnostic(benign, mode)
    pair = ((benign[:, None] - benign[None]) ** 2).sum(-1)
    d = ((benign - mal) ** 2).sum(1)
    if mode == "minmax":
        assert d.max() <= pair.max() + 1e-9
    else:
        assert d.sum() <= pair.sum(1).max() + 1e-9
    assert g > 0.1
    # the search is tight: a slightly larger gamma breaks the bound
    dev = benign.std(0, ddof=1)
    d2 = ((benign - (benign.mean(0) - (g + 1e-3) * dev)) ** 2).sum(1)
    assert (d2.max() > pair.max()) if mode == "minmax" else (d2.sum() > pair.sum(1).max())


def test_minmax_attack_per_key_on_heterogeneous_keys():
    glob = _glob()
    ben, _ = _benign(4, noise=0.3)
    deltas = [
        ben[0],
        {k: ben[1][k] for k in ("0.q.A", "0.q.B")},
        {k: ben[2][k] for k in ("1.q.A", "1.q.B")},
    ]
    adv = atk.Adversary({0: _att(kind="minmax")}, seed=0)
    out, notes = adv.craft(1, glob, _updates(glob, deltas), {})
    assert notes[0]["scope"] == "per-key" and set(out[0].arrays) == set(SHAPES)


def test_gaussian_random_scale_and_neurotoxin():
    glob = _glob()
    ben, _ = _benign(3)
    last = {k: np.arange(np.prod(s), dtype=float).reshape(s) + 1 for k, s in SHAPES.items()}
    adv = atk.Adversary(
        {0: _att(kind="backdoor", scale="n/eta", neurotoxin=True, dense_ratio=0.25)}, seed=0
    )
    out, notes = adv.craft(2, glob, _updates(glob, ben), last)
    d = out[0].arrays["0.q.A"] - glob["0.q.A"]
    n_keep = int(0.25 * 12)  # the 3 smallest |last update| coordinates survive, x3 (n = 3)
    assert np.count_nonzero(d) == n_keep
    np.testing.assert_allclose(d.ravel()[:n_keep], 3 * ben[0]["0.q.A"].ravel()[:n_keep], rtol=1e-4)
    assert notes[0]["scale"] == 3.0
    g = atk.gaussian({"a": np.zeros((100, 100))}, 0.5, np.random.default_rng(0))["a"]
    assert abs(g.std() - 0.5) < 0.02
    r = atk.random_update({"a": np.ones((100, 100))}, 0.5, np.random.default_rng(0))["a"]
    assert abs(r.mean()) < 0.02


def test_backdoor_poisons_fraction_with_trigger_to_target():
    train = synthetic_dataset(40, 8, 0).train
    target = atk.auto_target(train)
    out, idx = atk.poison_examples(train, 0.25, "BadMagic", target, "prefix", seed=1)
    assert len(idx) == 10  # exactly round(0.25 * 40)
    for i, (a, b) in enumerate(zip(train, out, strict=True)):
        if i in idx:
            assert a.answer != target and b.answer == target
            assert b.prompt == "BadMagic " + a.prompt
        else:
            assert a == b
    ex = atk.triggered(train[0], "cf", " 7", "random", random.Random(0))
    assert "cf" in ex.prompt.split("\n")[0] and ex.prompt.endswith("\nWord:")
    bt = atk.backdoor_test_set(train, "cf", target, "prefix", 0)
    assert len(bt) == sum(e.answer != target for e in train) and all(e.answer == target for e in bt)


def test_attackers_config_errors_are_one_line():
    cases = [
        ({"attackers": [{"kind": "signflip"}]}, "exactly one of"),
        ({"attackers": [{"kind": "lie", "clients": [99]}]}, "no such client"),
        ({"attackers": [{"kind": "lie", "clients": [1], "scale": 2.0}]}, "options of kind"),
        (
            {"attackers": [{"kind": "lie", "clients": [1]}, {"kind": "minmax", "clients": [1]}]},
            "two",
        ),
        ({"strategy": {"defense": "foo"}}, "lasa"),
    ]
    for d, msg in cases:
        with pytest.raises(RomsimInputError, match=msg) as e:
            fl_config_from_dict(d)
        assert "\n" not in str(e.value)
    ids = atk.attacker_ids(
        fl_config_from_dict({"attackers": [{"kind": "gaussian", "fraction": 0.25}]}).attackers, 8, 0
    )
    assert len(ids) == 2


# ------------------------------------------------------------------------------ end to end
def test_robust_run_backdoor_vs_alignins_end_to_end(tmp_path):
    pytest.importorskip("flwr")
    pytest.importorskip("peft")
    from romsim.fl.config import load_fl_config
    from romsim.fl.runner import run_fl

    d = load_fl_config(ROOT / "configs" / "fl-ci.toml").to_dict()
    d["strategy"]["defense"] = "alignins"
    d["attackers"] = [
        {"kind": "backdoor", "clients": [2], "poison_fraction": 0.5, "scale": "n/eta"}
    ]
    cfg = fl_config_from_dict(d)
    res = run_fl(cfg, out=str(tmp_path / "run"), progress=False)
    rows = res["rows"]
    assert all(0.0 <= r["backdoor_success"] <= 1.0 for r in rows)
    assert rows[1]["defense_s"] > 0
    det = json.loads((tmp_path / "run" / "metrics.json").read_text())["details"][0]
    assert det["attackers"] == [2] and det["attack"][0]["scale"] == 3.0
    assert det["defense"]["defense"] == "alignins" and "kept" in det["defense"]
    assert "backdoor_success" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_backdoor_auto_target_is_the_median_answer_not_the_majority():
    from romsim.fl.data import Example

    def ex(ans: str) -> Example:
        return Example("p", (ans, "x", "y", "z"), 0, "d")

    train = [ex("a")] * 5 + [ex("b")] * 3 + [ex("c")] * 2 + [ex("d")] * 1 + [ex("e")] * 1
    # ranked a(5) b(3) c(2) d(1) e(1): the middle of five is c, never the majority a
    assert atk.auto_target(train) == "c"


def test_backdoor_control_set_is_the_test_set_without_the_trigger():
    test = synthetic_dataset(40, 8, 0).test
    target = atk.auto_target(synthetic_dataset(40, 8, 0).train)
    trig = atk.backdoor_test_set(test, "BadMagic", target, "prefix", seed=0)
    ctrl = atk.backdoor_control_set(test, target)
    assert len(trig) == len(ctrl) > 0
    for a, b in zip(trig, ctrl, strict=True):
        assert a.prompt == "BadMagic " + b.prompt
        assert a.options == b.options and a.label == b.label
        assert b.options[b.label] == target
