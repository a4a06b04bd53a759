"""Layer-wise aggregation, STAgg and update validation (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from romsim.fl.aggregation import (
    ClientUpdate,
    STAggState,
    layerwise_fedavg,
    stagg,
    validate_update,
)


def _glob(layers=4):
    return {f"{j}.q.{ab}": np.zeros((2, 3), np.float32) for j in range(layers) for ab in "AB"}


def _arr(v):
    return np.full((2, 3), v, np.float32)


def test_layerwise_disjoint_layer_sets_take_each_clients_values():
    g = _glob()
    ups = [
        ClientUpdate(0, 10, {"0.q.A": _arr(1), "0.q.B": _arr(2)}),
        ClientUpdate(1, 30, {"1.q.A": _arr(3), "1.q.B": _arr(4)}),
        ClientUpdate(2, 5, {"2.q.A": _arr(5), "2.q.B": _arr(6)}),
    ]
    new, counts = layerwise_fedavg(g, ups)
    for u in ups:
        for k, a in u.arrays.items():
            np.testing.assert_array_equal(new[k], a)  # only its trainer counts, weight irrelevant
            assert counts[k] == 1
    np.testing.assert_array_equal(new["3.q.A"], g["3.q.A"])  # nobody trained layer 3
    assert counts["3.q.A"] == 0


def test_layerwise_overlap_is_a_mean_over_exactly_the_trainers():
    g = _glob()
    ups = [
        ClientUpdate(0, 10, {"0.q.A": _arr(1), "1.q.A": _arr(1)}),
        ClientUpdate(1, 30, {"0.q.A": _arr(5)}),
    ]
    # default: unweighted per-key mean, as the official Fed-HeLLo code
    new, counts = layerwise_fedavg(g, ups)
    np.testing.assert_allclose(new["0.q.A"], _arr(3.0))  # (1 + 5) / 2
    np.testing.assert_allclose(new["1.q.A"], _arr(1.0))  # client 1 did not train it
    assert counts["0.q.A"] == 2 and counts["1.q.A"] == 1
    # the option: weighted by training examples (romsim's earlier default)
    new, counts = layerwise_fedavg(g, ups, weights="examples")
    np.testing.assert_allclose(new["0.q.A"], _arr(4.0))  # (10*1 + 30*5) / 40
    np.testing.assert_allclose(new["1.q.A"], _arr(1.0))
    assert counts["0.q.A"] == 2 and counts["1.q.A"] == 1


def test_stagg_first_round_full_coverage_is_fedavg_and_compensates_later():
    g = _glob(2)
    ups = [ClientUpdate(0, 1, {k: _arr(1) for k in g}), ClientUpdate(1, 1, {k: _arr(3) for k in g})]
    new, _, state = stagg(g, ups, STAggState(), mu=0.5, rho=0.5)
    for k in g:
        np.testing.assert_allclose(new[k], _arr(2))
    # round 2: only layer 0 trained, by half the data: blended with its previous update;
    # layer 1 (nobody) moves by rho x its previous update
    ups2 = [ClientUpdate(0, 1, {"0.q.A": _arr(4), "0.q.B": _arr(4)}), ClientUpdate(1, 1, {})]
    new2, counts, _ = stagg(new, ups2, state, mu=0.5, rho=0.5)
    w = 0.5 * (1 - 0.5)
    np.testing.assert_allclose(new2["0.q.A"], _arr(2 + (1 - w) * 2 + w * 2))
    np.testing.assert_allclose(new2["1.q.A"], _arr(2 + 0.5 * 2))
    assert counts["1.q.A"] == 0


@pytest.mark.parametrize(
    "arrays, weight, why",
    [
        ({"0.q.A": np.full((2, 3), np.nan, np.float32)}, 1, "NaN"),
        ({"0.q.A": np.full((2, 3), np.inf, np.float32)}, 1, "NaN or inf"),
        ({"0.q.A": np.zeros((3, 3), np.float32)}, 1, "shape"),
        ({"9.q.A": np.zeros((2, 3), np.float32)}, 1, "unknown"),
        ({"1.q.A": np.zeros((2, 3), np.float32)}, 1, "not assigned"),
        ({"0.q.A": np.zeros((2, 3), np.int32)}, 1, "dtype"),
        ({"0.q.A": np.zeros((2, 3), np.float32)}, 0, "example count"),
        ({}, 1, "no arrays"),
    ],
)
def test_validate_update_reasons(arrays, weight, why):
    reason = validate_update(ClientUpdate(0, weight, arrays), _glob(), {"0.q.A"})
    assert reason is not None and why in reason


def test_validate_update_accepts_good_and_flags_missing():
    g = _glob()
    assert validate_update(ClientUpdate(0, 1, {"0.q.A": _arr(1)}), g, {"0.q.A"}) is None
    r = validate_update(ClientUpdate(0, 1, {"0.q.A": _arr(1)}), g, {"0.q.A", "0.q.B"})
    assert r is not None and "missing" in r
