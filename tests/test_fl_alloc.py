"""Allocation strategies, device budgets and the knapsack (pure functions, no torch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from romsim.fl import allocation as A
from romsim.fl.config import FLConfig
from romsim.fl.devices import GROUPS, layer_modules
from romsim.fl.runner import make_devices
from romsim.perf.memory import lora_params, train_sram_bytes

N = 30


@pytest.mark.parametrize("pattern", A.PATTERNS)
def test_gd_hla_each_client_gets_its_budget_of_distinct_layers(pattern):
    budgets = [30, 30, 20, 20, 20, 6, 6, 6]
    alloc = A.gd_hla(pattern, N, budgets)
    for k, layers in zip(budgets, alloc, strict=True):
        assert len(layers) == k == len(set(layers))
        assert all(0 <= j < N for j in layers)
    assert A.layer_counts(alloc, N).sum() == sum(budgets)


def test_gd_hla_documented_counts():
    # uniform: 4 clients x 15 layers over 30 layers -> every layer trained by exactly 2 clients
    c = A.layer_counts(A.gd_hla("uniform", N, [15] * 4), N)
    assert (c == 2).all()
    budgets = [10] * 6
    tri = A.layer_counts(A.gd_hla("triangle", N, budgets), N)
    inv = A.layer_counts(A.gd_hla("inverted", N, budgets), N)
    bot = A.layer_counts(A.gd_hla("bottleneck", N, budgets), N)
    assert (np.diff(tri) <= 0).all() and tri[0] > tri[-1]  # bottom layers most
    assert (np.diff(inv) >= 0).all() and inv[-1] > inv[0]  # top layers most
    mid = N // 2
    assert bot[0] > bot[mid] and bot[-1] > bot[mid]  # both ends most
    # the counts are the documented apportionment of K = 60 slots by the pattern weights
    for pat, got in (("triangle", tri), ("inverted", inv), ("bottleneck", bot)):
        assert (got == A.apportion(A.pattern_weights(pat, N), 60, 6)).all()
    assert list(A.apportion(A.pattern_weights("triangle", 4), 10, 4)) == [4, 3, 2, 1]


def test_rgd_hla_is_seeded_and_respects_budgets():
    budgets = [30, 20, 6, 6]
    a = A.rgd_hla("triangle", N, budgets, seed=3)
    assert a == A.rgd_hla("triangle", N, budgets, seed=3)
    assert a != A.rgd_hla("triangle", N, budgets, seed=4)
    assert [len(x) for x in a] == budgets and all(len(set(x)) == len(x) for x in a)
    # the draw follows the pattern: over many draws bottom layers are chosen more often
    c = sum(A.layer_counts(A.rgd_hla("triangle", N, [6] * 8, seed=s), N) for s in range(50))
    assert c[:10].sum() > 2 * c[-10:].sum()


def test_fim_topk_takes_top_scored_layers():
    # romsim's earlier FIM-HLA reading (fim_mode = "probe-topk"); the published FIM-HLA
    # samples from a Fisher-group prior (tests/test_fl_fedhello.py)
    s = np.arange(N, dtype=float)[::-1]  # layer 0 scores highest
    assert A.fim_topk(s, [3, 1]) == [[0, 1, 2], [0]]
    per_client = np.stack([s, s[::-1]])
    assert A.fim_topk(per_client, [2, 2]) == [[0, 1], [28, 29]]


def test_homogeneous_is_the_weakest_budget_on_top_layers():
    assert A.homogeneous(N, [30, 20, 6]) == [list(range(24, 30))] * 3


def _brute(values, weights, cap):
    best = 0.0
    for r in range(len(values) + 1):
        for comb in itertools.combinations(range(len(values)), r):
            w = sum(weights[i] for i in comb)
            v = sum(values[i] for i in comb)
            if w <= cap and v > best:
                best = v
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 10.0), st.floats(1.0, 100.0)), min_size=1, max_size=8),
    st.floats(5.0, 300.0),
)
def test_knapsack_respects_capacity_and_is_near_optimal(items, cap):
    values = [v for v, _ in items]
    weights = [w for _, w in items]
    chosen = A.knapsack(values, weights, cap, resolution=4096)
    assert sum(weights[i] for i in chosen) <= cap * (1 + 1e-9)
    # weights are rounded up to cap/4096: optimal up to items that need that slack
    got = sum(values[i] for i in chosen)
    assert got >= _brute(values, weights, cap * (1 - 8 / 4096)) - 1e-9


@pytest.fixture(scope="module")
def devices():
    return make_devices(FLConfig())  # the default 8 clients on 3 device classes


def test_device_budgets_come_from_sram(devices):
    ks = {d.klass: d.max_layers for d in devices}
    assert ks["roma-full"] == 30 and 0 < ks["roma-lite"] < ks["roma-mid"] < 30
    for d in devices:
        n = d.model.n_layers
        k = d.max_layers
        w_layer = lora_params(d.model, d.chip.lora.rank, d.targets, 1) * d.chip.lora.weight_bits / 8
        need = train_sram_bytes(d.model, d.chip, d.seq_len, d.batch, layers=k)["total_bytes"]
        # whole-layer assignment == train_sram_bytes(layers=k) + frozen adapters of the rest
        mods = layer_modules(range(n - k, n), d.targets)
        assert d.sram_needed_bytes(mods) == pytest.approx(need + (n - k) * w_layer)
        assert d.fits(mods)
        if k < n:
            assert not d.fits(layer_modules(range(n - k - 1, n), d.targets))


def test_knapsack_assignment_fits_every_device(devices):
    from romsim.fl.config import StrategySection
    from romsim.fl.strategy import Planner

    planner = Planner(StrategySection(name="fed-pilot"), devices, 30, seed=0)
    rng = np.random.default_rng(0)
    scores = {
        d.cid: {f"{j}.{k}": float(rng.random()) for j in range(30) for k in d.targets}
        for d in devices
    }
    assign = planner.assign(1, [d.cid for d in devices], scores)
    for d in devices:
        mods = assign[d.cid]
        assert mods and d.sram_needed_bytes(mods) <= d.capacity_bytes
        # nearly full: no remaining item would still fit
        free = d.capacity_bytes - d.sram_needed_bytes(mods)
        used = {(j, "attn" if k in GROUPS["attn"] else "mlp") for j, k in mods}
        if len(used) < 60:
            assert free < max(d.group_item_bytes(g) for g in GROUPS) * 1.01
    # weakest devices train fewer modules than the full chips
    assert len(assign[7]) < len(assign[2]) <= len(assign[0])


def test_step_cost_grows_with_backward_depth(devices):
    d = devices[-1]
    top = d.step_time_s(layer_modules([29], d.targets))
    bottom = d.step_time_s(layer_modules([0], d.targets))
    assert bottom > top > 0
    e_top = d.step_energy_j(layer_modules([29], d.targets))
    e_bottom = d.step_energy_j(layer_modules([0], d.targets))
    assert e_bottom > e_top > 0
    # training every module costs the perf model's whole training step (one energy model)
    from romsim.fl.devices import all_modules

    cost = d._step
    every = all_modules(d.model.n_layers, d.targets)
    assert d.step_energy_j(every) == pytest.approx(cost.energy_j, rel=1e-9)
    assert d.step_time_s(every) == pytest.approx(cost.time_s, rel=1e-9)
    # slower, smaller chips take longer per step
    assert devices[-1].step_time_s(layer_modules([0], d.targets)) > devices[0].step_time_s(
        layer_modules([0], d.targets)
    )
