import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from romsim.config import load_chip
from romsim.estimate import estimate
from romsim.modelspec import load_model
from romsim.perf.model import PerfModel
from romsim.perf.train import train_step_cost


@pytest.fixture(scope="module")
def chip3():
    return load_chip("roma-3b-w4")


@pytest.fixture(scope="module")
def m3():
    return load_model("llama-3.2-3b")


def test_longer_context_never_faster_decode(chip3, m3):
    pm = PerfModel(m3, chip3)
    cyc = pm.decode_cycles(np.arange(0, 8192, 97, dtype=float))
    assert np.all(np.diff(cyc) >= 0)


@settings(max_examples=12, deadline=None)
@given(st.integers(8, 128), st.integers(1, 64))
def test_more_fused_cells_never_slower(cells, extra):
    m = load_model("llama-3.2-1b")
    base = load_chip("roma-3b-w4").with_overrides(**{"model": "llama-3.2-1b"})
    a = base.with_overrides(**{"cell.cells_per_unit": cells})
    b = base.with_overrides(**{"cell.cells_per_unit": cells + extra})
    pa, pb = PerfModel(m, a), PerfModel(m, b)
    assert pb.decode_cycles(256.0)[0] <= pa.decode_cycles(256.0)[0] + 1e-9
    assert pb.prefill_cycles(300) <= pa.prefill_cycles(300) + 1e-9


def test_prefill_grows_with_prompt(chip3, m3):
    pm = PerfModel(m3, chip3)
    t = [pm.prefill_cycles(L) for L in (1, 16, 256, 1024, 4096)]
    assert all(x < y for x, y in zip(t, t[1:], strict=False))


def test_train_step_grows_with_seq_len_and_rank(chip3, m3):
    pm = PerfModel(m3, chip3)
    c1 = train_step_cost(pm, 4, 64)
    c2 = train_step_cost(pm, 4, 256)
    assert c2.time_s > c1.time_s and c2.sram_needed_bytes > c1.sram_needed_bytes
    hi = chip3.with_overrides(**{"lora.rank": 64})
    c3 = train_step_cost(PerfModel(m3, hi), 4, 256)
    assert c3.time_s > c2.time_s and c3.sram_needed_bytes > c2.sram_needed_bytes
    assert c3.trainable_params == 4 * c2.trainable_params
    assert c3.energy_j > c2.energy_j > c1.energy_j > 0


def test_estimate_fields_and_consistency(chip3, m3):
    e = estimate(m3, chip3, 128, 128)
    assert e.fits and e.rom_bytes <= e.rom_capacity_bytes
    assert len(e.per_layer) == m3.n_layers
    assert e.decode_tokens_per_s <= e.decode_tokens_per_s_empty_kv
    assert e.throughput_tokens_per_s < e.decode_tokens_per_s
    assert abs(sum(e.area_breakdown_mm2.values()) - e.area_mm2) < 1e-6
    assert 0 < e.utilisation["rom"] <= 1
    # per-op breakdown sums to the decode step
    x = 128 + 64
    pm = PerfModel(m3, chip3)
    assert sum(pm.decode_breakdown(x).values()) == pytest.approx(pm.decode_cycles(float(x))[0])


def test_too_big_model_does_not_fit(chip3):
    m = load_model("llama-3.1-8b")
    e = estimate(m, chip3.with_overrides(**{"model": "llama-3.1-8b"}), 16, 16, per_layer=False)
    assert not e.fits and "needs" in e.fit_problems[0] and "GiB of ROM" in e.fit_problems[0]


def test_node_scaling_changes_area(chip3, m3):
    a7 = estimate(m3, chip3, 8, 8, per_layer=False).area_mm2
    a28 = estimate(
        m3, chip3.with_overrides(**{"tech.process_nm": 28}), 8, 8, per_layer=False
    ).area_mm2
    a5 = estimate(
        m3, chip3.with_overrides(**{"tech.process_nm": 5}), 8, 8, per_layer=False
    ).area_mm2
    assert a5 < a7 < a28


def test_brom_smaller_than_conventional_rom(chip3, m3):
    conv = chip3.with_overrides(**{"rom.style": "rom"})
    assert (
        estimate(m3, conv, 8, 8, per_layer=False).area_mm2
        > estimate(m3, chip3, 8, 8, per_layer=False).area_mm2
    )
