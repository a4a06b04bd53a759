"""A whole matrix unit (8 cells, the unit's fp32 reduction, the activation broadcast) and a 2x2
mesh slice with its links running SmolLM2-135M layer-0 ``k`` (4 bits, 64-cell chip): every row
sum bit-exact with ``qmatmul(path="int")``; cycles vs the perf model and cyclesim.

``pytest sim -k "unit or mesh"``."""

from __future__ import annotations

import mesh_cases
import pytest
from romsim.rtl import simrun


@pytest.mark.parametrize(
    "sim",
    [
        pytest.param(s, marks=pytest.mark.skipif(not simrun.available(s), reason=f"{s} missing"))
        for s in ("verilator", "icarus")
    ],
)
def test_mesh_slice_unit_k_cocotb(sim, tmp_path, rtl_build_dir):
    n_random = 1 if sim == "verilator" else 0  # Icarus: 3 real vectors only (slow on 32 cells)
    res, mc = mesh_cases.run_slice(sim, tmp_path, n_random=n_random, build_dir=rtl_build_dir)
    assert res["mismatches"] == 0 and res["rows_checked"] == (3 + n_random) * 96
    for r in res["runs"]:
        assert r["cycles"] == mc["rtl_formula"][len(r["vectors"])], (r, mc)
    # the documented relation to the models (docs/rtl.md, "Matrix unit and mesh slice")
    one = mc["rtl_formula"][1]
    # the unit's reduction is a binary tree over 8 cells: 3 stages, the perf model's derived
    # cell.tree_cycles, so the analytical cycles equal the RTL's
    assert mc["adder_tree_cycles"] == 3
    assert mc["perf_model"] == one
    assert mc["cyclesim"] > mc["perf_model"]
