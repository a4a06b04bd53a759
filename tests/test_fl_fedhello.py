"""Fed-HeLLo as published (docs/federated.md, "Fed-HeLLo as published"): RGD-HLA's prior = the
GD-HLA layer counts, FIM-HLA's server-side Fisher groups and schedule, the unweighted per-key
mean, the baselines (FedRA, HetLoRA, exclusive, straggler) and the presets. Sampling is checked
statistically against the exact inclusion law of the published priors over many seeded draws
(every draw is seeded, so every test is deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from romsim.errors import RomsimInputError
from romsim.fl import allocation as A
from romsim.fl.aggregation import (
    ClientUpdate,
    STAggState,
    hetlora_aggregate,
    layerwise_fedavg,
    lora_norm,
    stagg,
    truncate_rank,
)
from romsim.fl.config import StrategySection, fl_config_from_dict, load_fl_config
from romsim.fl.runner import make_devices
from romsim.fl.strategy import Planner, check_strategy, class_budgets, fisher_holdout

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "fl-fedhello-ci.toml"
PAPER = ROOT / "configs" / "fl-fedhello-paper.toml"
P_MIN = 1e-4  # a correct sampler fails one of these tests with about this probability


# ------------------------------------------------------------------------------ helpers
def _chi2_inclusion(draws: list[list[int]], p: np.ndarray, k: int) -> float:
    """p-value of the per-layer inclusion counts of ``draws`` (sets of k layers) under the
    exact successive-sampling law of ``p``: Mahalanobis distance with the exact covariance of
    the inclusion indicators (rank n - 1, their sum is k), chi-square with n - 1 d.o.f."""
    n = len(p)
    prob = A.set_probabilities(p, k)
    masks = np.flatnonzero(prob)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
    w = prob[masks]
    pi = w @ bits
    cov = (bits * w[:, None]).T @ bits - np.outer(pi, pi)
    counts = A.layer_counts(draws, n).astype(np.float64)
    d = counts - len(draws) * pi
    keep = pi > 0  # layers that can never be drawn must have count 0
    assert (counts[~keep] == 0).all()
    cov, d = cov[np.ix_(keep, keep)], d[keep]
    dof = int(keep.sum()) - 1 if k < keep.sum() else 0
    if dof == 0:
        assert np.allclose(d, 0)
        return 1.0
    t = float(d @ np.linalg.pinv(len(draws) * cov) @ d)
    return float(stats.chi2.sf(t, dof))


def _single_draw_chi2(draws: list[list[int]], p: np.ndarray) -> float:
    """Goodness of fit of one-layer draws to the prior itself (multinomial chi-square)."""
    n = len(p)
    counts = A.layer_counts(draws, n)
    keep = p > 0
    assert (counts[~keep] == 0).all()
    exp = len(draws) * p[keep] / p[keep].sum()
    return float(stats.chisquare(counts[keep], exp).pvalue)


def _devices(path: Path = CI, **strategy):
    d = load_fl_config(path).to_dict()
    d["strategy"].update(strategy)
    cfg = fl_config_from_dict(d)
    return cfg, make_devices(cfg)


# ------------------------------------------------------------------------------ RGD-HLA
def test_rgd_hla_prior_is_the_gd_hla_counts_and_the_official_bottleneck_prior():
    # GD-HLA over one client per capacity group (6, 9, 12 of 12) gives the official
    # layer_prob = [1/9]*3 + [2/27]*2 + [1/27]*3 + [2/27] + [1/9]*3
    p = A.gd_hla_prior("bottleneck", 12, [6, 9, 12])
    np.testing.assert_allclose(p * 27, [3, 3, 3, 2, 2, 1, 1, 1, 2, 3, 3, 3])
    np.testing.assert_allclose(p, A.OFFICIAL_BOTTLENECK_12)
    counts = A.layer_counts(A.gd_hla("bottleneck", 12, [6, 9, 12]), 12)
    np.testing.assert_allclose(p, counts / counts.sum())
    # the prior is the counts, not the raw pattern weights (romsim's earlier RGD-HLA)
    w = A.pattern_weights("bottleneck", 12)
    assert not np.allclose(p, w / w.sum())
    for pattern in A.PATTERNS:
        q = A.gd_hla_prior(pattern, 30, [30, 23, 15])
        assert q.sum() == pytest.approx(1) and (q > 0).sum() >= 30  # every budget drawable


def test_rgd_hla_single_draws_follow_the_published_prior_chi_square():
    p = A.OFFICIAL_BOTTLENECK_12
    draws = []
    for seed in range(3000):  # 3000 seeded rounds, one 1-layer client each
        draws += A.rgd_hla("bottleneck", 12, [1], seed=[seed, 1], prior_budgets=[6, 9, 12])
    assert _single_draw_chi2(draws, p) > P_MIN
    # a wrong prior (romsim's earlier: p ~ pattern weights) is rejected by the same test
    w = A.pattern_weights("bottleneck", 12)
    assert _single_draw_chi2(draws, w / w.sum()) < 1e-6


@pytest.mark.parametrize("k", [6, 9])
def test_rgd_hla_inclusion_matches_the_official_sampler(k):
    """The official code draws ``np.random.choice(12, p=layer_prob, size=k, replace=False)``
    (legacy RandomState); romsim's draws and the official mechanism's both match the exact
    inclusion law of the published prior."""
    p = A.OFFICIAL_BOTTLENECK_12
    ours = [A.rgd_hla("bottleneck", 12, [k], seed=[s, 3], prior_budgets=[6, 9, 12])[0]
            for s in range(2500)]  # fmt: skip
    rs = np.random.RandomState(1234)
    official = [sorted(rs.choice(12, p=p, size=k, replace=False).tolist()) for _ in range(2500)]
    assert _chi2_inclusion(ours, p, k) > P_MIN
    assert _chi2_inclusion(official, p, k) > P_MIN
    pi = A.inclusion_probabilities(p, k)
    assert pi.sum() == pytest.approx(k)
    if k == 6:  # Monte-Carlo values of the official sampler (shared/notes/robust_fl.md, B.2)
        np.testing.assert_allclose(pi, [.63, .63, .62, .48, .48, .27, .27, .27, .47, .62, .63, .63],
                                   atol=0.011)  # fmt: skip
    # and the flattening is real: inclusion is not k * p
    assert np.abs(pi - k * p).max() > 0.04


def test_rgd_hla_planner_uses_the_device_classes_and_reseeds_per_round():
    cfg, devs = _devices(PAPER, name="rgd-hla", pattern="bottleneck")
    assert class_budgets(devs) == [30, 23, 15]
    pl = Planner(cfg.strategy, devs, 30, seed=0)
    np.testing.assert_allclose(pl.rgd_prior(), A.gd_hla_prior("bottleneck", 30, [30, 23, 15]))
    cids = pl.sample(1)
    a1, a1b, a2 = pl.assign(1, cids), pl.assign(1, cids), pl.assign(2, cids)
    assert a1 == a1b and a1 != a2  # seeded by (seed, round): a resume draws the same layers
    for c in cids:
        layers = {m[0] for m in a1[c]}
        assert len(layers) == devs[c].max_layers
        assert {m[1] for m in a1[c]} == {"q", "v"}
    # statistically: the mid clients' (23 layers) inclusion over many rounds follows the prior
    p = pl.rgd_prior()
    assert (p > 0).all()
    mids = [c for c in cids if devs[c].max_layers == 23]
    draws = [sorted({m[0] for m in pl.assign(r, cids)[c]}) for r in range(1, 401) for c in mids]
    pi_mc = A.layer_counts(draws, 30) / len(draws)
    # n = 30 is too large for the exact law: against a seeded Monte Carlo of the same law
    rs = np.random.RandomState(7)
    ref = A.layer_counts([rs.choice(30, 23, replace=False, p=p) for _ in range(20000)], 30) / 20000
    se = np.sqrt(ref * (1 - ref) / len(draws) + ref * (1 - ref) / 20000)
    assert (np.abs(pi_mc - ref) <= 4.5 * se + 1e-12).all()


# ------------------------------------------------------------------------------ FIM-HLA
def test_fim_hla_groups_are_the_exact_1d_kmeans_ordered_by_centre():
    rng = np.random.default_rng(0)
    labs = np.array(list(np.ndindex(*(3,) * 7)))  # every labelling of 7 layers
    labs = labs[[len(set(x)) == 3 for x in labs.tolist()]]
    onehot = labs[:, :, None] == np.arange(3)  # (labellings, layer, group)
    for _ in range(20):
        s = rng.gamma(1.0, size=7)
        g = A.fisher_groups(s)
        cnt = onehot.sum(1)
        tot = (onehot * s[None, :, None]).sum(1)
        best = float(((s**2).sum() - (tot**2 / cnt).sum(1)).min())  # brute-force k-means SSE
        got = sum(((s[g == c] - s[g == c].mean()) ** 2).sum() for c in range(3))
        assert got == pytest.approx(best, rel=1e-9, abs=1e-12)
        centres = [s[g == c].mean() for c in range(3)]
        assert centres[0] < centres[1] < centres[2]  # 0 = low Fisher, 2 = high
    # the published weights: 1/27, 2/27, 1/9 for the low / middle / high group
    s = np.array([0.1, 0.2, 5.0, 5.1, 9.0, 9.2, 0.15, 5.05, 9.1, 0.12, 0.11, 5.2])
    np.testing.assert_array_equal(A.fisher_groups(s), [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 0, 1])
    p = A.fim_prior(s)
    np.testing.assert_allclose(p / p.min(), [1, 1, 2, 2, 3, 3, 1, 2, 3, 1, 1, 2])
    np.testing.assert_allclose(A.fim_prior(np.ones(12)), np.full(12, 1 / 12))  # no information


def test_fim_hla_schedule_is_the_official_one():
    cfg = StrategySection(name="fim-hla")  # fim_prior_rounds = fim_every = 50
    _, devs = _devices()
    pl = Planner(cfg, devs, 4, seed=0)
    refresh = [r for r in range(1, 501) if pl.fisher_round(r)]
    # official: t > 49 and t % 50 == 0 with t = round - 1 (t counts from 0)
    assert refresh == [t + 1 for t in range(500) if t > 49 and t % 50 == 0]
    assert refresh == [51, 101, 151, 201, 251, 301, 351, 401, 451] and not pl.needs_scores
    assert [r for r in range(1, 6) if Planner(StrategySection(name="fim-hla", fim_prior_rounds=1,
            fim_every=2), devs, 4, 0).fisher_round(r)] == [3, 5]  # fmt: skip
    probe = Planner(StrategySection(name="fim-hla", fim_mode="probe-topk"), devs, 4, 0)
    assert probe.needs_scores and not probe.fisher_round(51)


def _fisher(scores_per_layer):
    return {f"{j}.{k}": v / 2 for j, v in enumerate(scores_per_layer) for k in ("q", "v")}


def test_fim_hla_samples_from_the_fisher_prior_on_refresh_rounds_and_rgd_otherwise():
    cfg, devs = _devices(fim_prior_rounds=0, fim_every=2)  # refresh on rounds 1, 3, 5, ...
    pl = Planner(cfg.strategy, devs, 4, seed=0)
    cids = pl.sample(1)
    scores = [0.1, 9.0, 0.2, 4.0]  # groups: low, high, low, middle
    fisher = _fisher(scores)
    with pytest.raises(ValueError, match="Fisher"):
        pl.assign(1, cids)  # a refresh round needs the server's scores
    p_fim = A.fim_prior(np.array(scores))
    np.testing.assert_allclose(p_fim / p_fim.min(), [1, 3, 1, 2])
    p_rgd = A.gd_hla_prior("bottleneck", 4, [4, 3, 2])
    by_k: dict[str, dict[int, list]] = {"fim": {}, "rgd": {}}
    for rnd in range(1, 1601):
        refresh = pl.fisher_round(rnd)
        a = pl.assign(rnd, cids, fisher=fisher if refresh else None)
        assert (pl.fim_note is not None) == refresh
        if refresh:
            assert pl.fim_note["groups"] == [0, 2, 0, 1]
        for c in cids:
            layers = sorted({m[0] for m in a[c]})
            assert len(layers) == devs[c].max_layers
            by_k["fim" if refresh else "rgd"].setdefault(len(layers), []).append(layers)
    for k in (2, 3):
        assert _chi2_inclusion(by_k["fim"][k], p_fim, k) > P_MIN
        assert _chi2_inclusion(by_k["rgd"][k], p_rgd, k) > P_MIN
    # the Fisher prior is used only on its round (official); fim_persist keeps it
    persist = Planner(cfg.strategy.model_copy(update={"fim_persist": True}), devs, 4, seed=0)
    persist.assign(1, cids, fisher=fisher)
    np.testing.assert_allclose(persist.round_prior(2, None), p_fim)
    np.testing.assert_allclose(pl.round_prior(2, None), p_rgd)
    # ... and it survives a checkpoint
    again = Planner(persist.cfg, devs, 4, seed=0)
    again.load_state_arrays(persist.state_arrays())
    np.testing.assert_allclose(again.fim_prior, p_fim)
    assert again.assign(2, cids) == persist.assign(2, cids)


def test_kept_fisher_prior_is_validated_on_resume(tmp_path):
    from romsim.fl.runner import _check_planner_arrays, expected_adapter_shapes

    cfg, _ = _devices()
    shapes = expected_adapter_shapes(cfg)
    npz = tmp_path / "round-0001.npz"
    _check_planner_arrays(npz, {"fim/prior": np.array([0.4, 0.1, 0.1, 0.4])}, shapes)
    for bad in (np.array([0.5, 0.5]), np.array([np.nan, 0.1, 0.1, 0.4]), np.zeros(4),
                np.array([-0.1, 0.5, 0.3, 0.3])):  # fmt: skip
        with pytest.raises(RomsimInputError, match="fim/prior"):
            _check_planner_arrays(npz, {"fim/prior": bad}, shapes)


def test_fim_hla_single_draws_chi_square():
    p = A.fim_prior(np.array([0.1, 9.0, 0.2, 4.0, 4.1, 8.8, 0.05, 0.3]))
    draws = []
    for seed in range(3000):
        draws += A.fim_hla(np.array([0.1, 9.0, 0.2, 4.0, 4.1, 8.8, 0.05, 0.3]), [1], seed=seed)
    assert _single_draw_chi2(draws, p) > P_MIN
    np.testing.assert_allclose(sorted(set(np.round(p / p.min(), 9))), [1, 2, 3])


def test_fisher_holdout_and_the_config_check():
    cfg, devs = _devices()
    test = list(range(cfg.data.n_test))
    assert fisher_holdout(cfg, test) == list(range(16, 24))  # after the scored items
    check_strategy(cfg, devs)
    d = cfg.to_dict()
    d["strategy"]["fim_samples"] = 9
    with pytest.raises(RomsimInputError, match="fim_samples"):
        check_strategy(fl_config_from_dict(d), devs)
    d["strategy"]["fim_mode"] = "probe-topk"  # the client probe needs no server data
    check_strategy(fl_config_from_dict(d), devs)


# ------------------------------------------------------------------------------ baselines
def test_fedra_draws_layers_uniformly():
    draws = [layers for s in range(3000) for layers in A.fedra(12, [1], seed=s)]
    assert _single_draw_chi2(draws, np.full(12, 1 / 12)) > P_MIN
    draws = [layers for s in range(2000) for layers in A.fedra(12, [6], seed=s)]
    assert _chi2_inclusion(draws, np.full(12, 1 / 12), 6) > P_MIN
    cfg, devs = _devices(name="fedra")
    pl = Planner(cfg.strategy, devs, 4, seed=0)
    a = pl.assign(1, pl.sample(1))
    assert [len({m[0] for m in a[c]}) for c in sorted(a)] == [4, 3, 2]
    assert pl.aggregation == "layerwise"


def test_straggler_and_exclusive_baselines():
    # the official 6_6_6 run: every client layers [0, 2, 4, 6, 8, 10]
    assert A.straggler(12, [6, 9, 12]) == [[0, 2, 4, 6, 8, 10]] * 3
    assert A.straggler(30, [30, 20, 6])[0] == [0, 5, 10, 15, 20, 25]
    assert A.exclusive(12, [6, 9, 12]) == [[], [], list(range(12))]
    cfg, devs = _devices(name="straggler")
    pl = Planner(cfg.strategy, devs, 4, seed=0)
    a = pl.assign(1, pl.sample(1))
    assert all(sorted({m[0] for m in mods}) == [0, 2] for mods in a.values())
    cfg, devs = _devices(name="exclusive")
    check_strategy(cfg, devs)
    pl = Planner(cfg.strategy, devs, 4, seed=0)
    assert pl.sample(1) == [0]  # only the device that trains all 4 layers takes part
    assert {m[0] for m in pl.assign(1, [0])[0]} == {0, 1, 2, 3}
    d = cfg.to_dict()
    d["devices"] = d["devices"][1:]  # nobody can train every layer
    cfg2 = fl_config_from_dict(d)
    with pytest.raises(RomsimInputError, match="all 4 layers"):
        check_strategy(cfg2, make_devices(cfg2))


def test_hetlora_ranks_truncation_and_sparsity_weighted_aggregation():
    assert A.hetlora_ranks(16, 12, [6, 9, 12]) == [8, 12, 16]
    assert A.hetlora_ranks(8, 30, [30, 20, 6]) == [8, 5, 2]
    cfg, devs = _devices(name="hetlora")
    pl = Planner(cfg.strategy, devs, 4, seed=0)
    assert [pl.client_rank(c) for c in range(3)] == [16, 12, 8] and pl.aggregation == "hetlora"
    assert all(len(m) == 8 for m in pl.assign(1, [0, 1, 2]).values())  # all layers, q and v
    rng = np.random.default_rng(0)
    glob = {"0.q.A": rng.normal(size=(4, 5)), "0.q.B": rng.normal(size=(3, 4))}
    glob = {k: v.astype(np.float32) for k, v in glob.items()}
    t = truncate_rank(glob, 2)
    assert (t["0.q.A"][2:] == 0).all() and (t["0.q.B"][:, 2:] == 0).all()
    np.testing.assert_array_equal(t["0.q.A"][:2], glob["0.q.A"][:2])
    assert set(pl.client_globals(glob, [0, 1, 2])) == {1, 2}  # the full-rank client gets glob
    # two clients: rank 4 and rank 2 (its padded components are zero)
    full = {k: v + 1 for k, v in glob.items()}
    low = {k: v + 2 for k, v in truncate_rank(glob, 2).items()}
    low["0.q.A"][2:] = 0
    low["0.q.B"][:, 2:] = 0
    ups = [ClientUpdate(0, 10, full), ClientUpdate(1, 30, low)]
    new, counts = hetlora_aggregate(glob, ups, {0: 4, 1: 2})
    s = np.array([lora_norm(full), lora_norm(low)])
    np.testing.assert_allclose(s[0], np.linalg.norm(full["0.q.B"].astype(np.float64)
                                                    @ full["0.q.A"]), rtol=1e-9)  # fmt: skip
    w = s / s.sum()
    a = glob["0.q.A"].astype(np.float64)
    want = a.copy()
    want[:2] += w[0] * 1 + w[1] * 2  # both held rank components 0, 1
    want[2:] += w[0] * 1  # only the full-rank client held 2, 3; padded zeros for the other
    np.testing.assert_allclose(new["0.q.A"], want, rtol=1e-6)
    assert counts["0.q.A"] == 2


# ------------------------------------------------------------------------------ aggregation
def test_default_aggregation_is_the_unweighted_per_key_mean():
    assert StrategySection().aggregation_weights == "uniform"
    g = {"0.q.A": np.zeros((2, 2), np.float32), "1.q.A": np.zeros((2, 2), np.float32)}
    ups = [ClientUpdate(0, 1, {"0.q.A": np.full((2, 2), 1.0, np.float32)}),
           ClientUpdate(1, 99, {"0.q.A": np.full((2, 2), 3.0, np.float32),
                                "1.q.A": np.full((2, 2), 5.0, np.float32)})]  # fmt: skip
    _, devs = _devices()
    for name in ("gd-hla", "rgd-hla", "fim-hla", "fedra", "straggler", "exclusive", "fedavg"):
        new, _ = Planner(StrategySection(name=name), devs, 4, 0).aggregate(g, ups)
        np.testing.assert_allclose(new["0.q.A"], 2.0)  # (1 + 3) / 2, not (1 + 297) / 100
        np.testing.assert_allclose(new["1.q.A"], 5.0)  # only its trainer
    w = Planner(StrategySection(name="gd-hla", aggregation_weights="examples"), devs, 4, 0)
    np.testing.assert_allclose(w.aggregate(g, ups)[0]["0.q.A"], 2.98)
    np.testing.assert_allclose(layerwise_fedavg(g, ups, "examples")[0]["0.q.A"], 2.98)
    # STAgg's spatial mean and coverage follow the same option
    new, _, _ = stagg(g, ups, STAggState())
    np.testing.assert_allclose(new["0.q.A"], 2.0)


# ------------------------------------------------------------------------------ presets
def test_presets_are_the_papers_lora_setting():
    for path in (PAPER, CI):
        cfg = load_fl_config(path)
        assert cfg.lora.targets == ("q", "v") and cfg.lora.rank == 16 and cfg.lora.alpha == 16
        assert cfg.lora.dropout == 0.1
        s = cfg.strategy
        assert s.name == "fim-hla" and s.pattern == "bottleneck" and s.fim_mode == "server"
        assert s.aggregation_weights == "uniform"
        devs = make_devices(cfg)
        check_strategy(cfg, devs)
        n = devs[0].model.n_layers
        # three equal capacity groups: 100 % / 75 % / 50 % of the layers (the paper: 12/9/6)
        assert [round(k / n, 2) for k in class_budgets(devs)] in (
            [1.0, 0.77, 0.5],
            [1.0, 0.75, 0.5],
        )
    paper = load_fl_config(PAPER).strategy
    assert (paper.fim_prior_rounds, paper.fim_every, paper.fim_samples) == (50, 50, 100)
    assert not paper.fim_persist and load_fl_config(PAPER).run.rounds == 500


# ------------------------------------------------------------------------------ torch parts
@pytest.fixture(scope="module")
def bundle():
    pytest.importorskip("peft")
    from romsim.fl.train import adapter_shapes, init_adapter, load_bundle, set_adapter

    cfg = load_fl_config(CI)
    b = load_bundle(cfg.model, cfg.lora, 1)
    glob = init_adapter(adapter_shapes(b), 0)
    rng = np.random.default_rng(1)  # a non-zero B, so both A and B get gradients
    glob = {k: (v if k.endswith(".A") else rng.normal(0, 0.05, v.shape).astype(np.float32))
            for k, v in glob.items()}  # fmt: skip
    set_adapter(b, glob)
    return cfg, b, glob


def test_fisher_scores_are_per_sample_means_of_squares(bundle):
    import torch

    from romsim.fl.data import load_dataset
    from romsim.fl.train import _option_logprobs, fisher_scores

    cfg, b, _ = bundle
    items = fisher_holdout(cfg, load_dataset(cfg.data).test)
    f1 = fisher_scores(b, items)
    assert f1 == fisher_scores(b, items)  # deterministic (eval mode, no dropout)
    assert set(f1) == {f"{j}.{k}" for j in range(4) for k in ("q", "v")}
    assert all(v > 0 for v in f1.values())
    # the module score is ||mean_i g_i^2||_F summed over A and B (checked by hand for one key)
    p = b.params["1.v.B"]
    p.requires_grad_(True)
    sq = torch.zeros_like(p)
    mean_g = torch.zeros_like(p)
    for e in items:
        lp, _ = _option_logprobs(b, [(e.prompt, e.answer)])
        (g,) = torch.autograd.grad(lp.sum(), p)
        sq += g**2 / len(items)
        mean_g += g / len(items)
    p.requires_grad_(False)
    p_a = b.params["1.v.A"]
    p_a.requires_grad_(True)
    sq_a = torch.zeros_like(p_a)
    for e in items:
        lp, _ = _option_logprobs(b, [(e.prompt, e.answer)])
        (g,) = torch.autograd.grad(lp.sum(), p_a)
        sq_a += g**2 / len(items)
    p_a.requires_grad_(False)
    assert f1["1.v"] == pytest.approx(float(sq.norm() + sq_a.norm()), rel=1e-4)
    # per-sample squares, not the square of the batch gradient (Jensen: strictly larger)
    assert float(sq.sum()) > float((mean_g**2).sum())


def test_hetlora_truncated_components_stay_exactly_zero_in_local_training(bundle):
    from romsim.fl.data import load_dataset
    from romsim.fl.devices import all_modules
    from romsim.fl.train import local_train, set_adapter

    cfg, b, glob = bundle
    t = truncate_rank(glob, 5)
    set_adapter(b, t)
    ex = load_dataset(cfg.data).train[:8]
    out, _ = local_train(b, ex, all_modules(4, ("q", "v")), steps=3, batch=4, lr=1e-2, seed=0,
                         weight_decay=0.01)  # fmt: skip
    for k, a in out.items():
        if k.endswith(".A"):
            assert (a[5:] == 0).all() and not np.array_equal(a[:5], t[k][:5])
        else:
            assert (a[:, 5:] == 0).all() and not np.array_equal(a[:, :5], t[k][:, :5])
    set_adapter(b, glob)


# ------------------------------------------------------------------------------ real runs
@pytest.mark.parametrize("strategy", ["fim-hla", "hetlora"])
def test_fedhello_ci_runs_through_romsim_fl_run(strategy, tmp_path, capsys):
    """``romsim fl run --config configs/fl-fedhello-ci.toml`` (Flower simulation engine)."""
    pytest.importorskip("flwr")
    pytest.importorskip("peft")
    from romsim.fl.__main__ import main

    out = tmp_path / strategy
    assert main(["run", "--config", str(CI), "--out", str(out), "--no-progress",
                 "--strategy", strategy]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and summary["eval_loss"] < summary["base_eval_loss"]
    det = json.loads((out / "metrics.json").read_text())["details"]
    assert [d["round"] for d in det] == [1, 2] and not any(d["dropped"] for d in det)
    for d in det:
        layers = {c: {m.split(".")[0] for m in mods} for c, mods in d["assignment"].items()}
        kinds = {m.split(".")[1] for mods in d["assignment"].values() for m in mods}
        assert kinds == {"q", "v"}
        if strategy == "fim-hla":
            assert [len(layers[c]) for c in ("0", "1", "2")] == [4, 3, 2]
        else:
            assert all(len(v) == 4 for v in layers.values())
    if strategy == "fim-hla":
        assert "fim" not in det[0]  # round 1: the RGD-HLA prior
        fim = det[1]["fim"]  # round 2: the server's Fisher refresh
        assert fim["round"] == 2 and len(fim["layer_scores"]) == 4
        assert sorted(set(fim["groups"])) == [0, 1, 2]
        np.testing.assert_allclose(fim["prior"], A.fim_prior(np.array(fim["layer_scores"])))
        assert "server Fisher scores on 8 held-out items" in (out / "log.txt").read_text()
    else:  # the rank-8 and rank-12 clients send back zero-padded rank components
        from safetensors.numpy import load_file

        saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert len(saved) == 4 * 2 * 2
