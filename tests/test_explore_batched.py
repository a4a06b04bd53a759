"""The batched evaluator (romsim.explore.evaluate) equals the scalar model design by design."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from romsim.config import ChipConfig, load_chip
from romsim.errors import RomsimInputError
from romsim.explore.evaluate import CHEAP_FIELDS, TRAIN_FIELDS, evaluate_batch, evaluate_designs
from romsim.explore.fields import FIELDS, scalar_fields
from romsim.modelspec import ModelSpec, load_model

REL = 1e-9
PRESETS = {"roma-3b-w4": "llama-3.2-3b", "roma-8b-w2": "llama-3-8b"}
QUANTS = ("w4g128", "w2g128", "w3g128", "w8g128", "w4attn-w2mlp")
STYLES = ("brom", "rom", "logic")
VARIANTS = (
    {},
    {"placement.lm_head": "rom"},
    {"placement.lm_head": "rom", "placement.embed": "rom"},
    {"placement.embed": "sram", "operating.power_gating": True},
    {"operating.clock_gating": False},
    {"operating.junction_temp_c": 85.0, "operating.power_gating": True},
)

# numeric axes: key -> strategy around the presets (some values outside the schema on purpose)
AXES = {
    "mesh.rows": st.integers(2, 20),
    "mesh.cols": st.integers(1, 20),
    "mesh.vector_rows": st.integers(1, 3),
    "cell.cells_per_unit": st.integers(8, 160),
    "cell.mac_weight_bits_per_cycle": st.sampled_from([16, 32, 64, 128, 256]),
    "cell.weight_reuse_tokens": st.integers(1, 8),
    "rom.macro_rows": st.integers(1024, 40000),
    "rom.bank_rows": st.integers(64, 8192),
    "rom.word_bits": st.sampled_from([32, 48, 64, 128]),
    "sram.lora_kv_bytes": st.integers(8 << 20, 600 << 20),
    "sram.act_bytes": st.integers(0, 40 << 20),
    "h_unit.macs_per_unit_per_cycle": st.integers(16, 1024),
    "h_unit.token_block": st.integers(1, 128),
    "interconnect.link_bytes_per_cycle": st.sampled_from([16, 32, 64, 128, 256, 512]),
    "tech.clock_hz": st.floats(1e8, 2e9),
    "tech.process_nm": st.sampled_from([7, 5, 16, 28]),
    "lora.rank": st.integers(0, 64),
    "operating.batch": st.integers(1, 16),
    "operating.junction_temp_c": st.floats(0.0, 140.0),
}


@cache
def _model(name: str) -> ModelSpec:
    return load_model(name)


@cache
def _base(preset: str, variant: int) -> ChipConfig:
    chip = load_chip(preset)
    return chip.with_overrides(**VARIANTS[variant]) if VARIANTS[variant] else chip


def _scalar_or_none(model, base, ov, p, g, train=False):
    try:
        chip = base.with_overrides(**ov)
    except RomsimInputError:
        return None
    return scalar_fields(model, chip, p, g, train=train)


def _close(x, y) -> bool:
    if isinstance(x, bool):
        return bool(y) == x
    if x == y:
        return True
    return abs(y - x) <= REL * max(abs(x), abs(y))


design = st.fixed_dictionaries(
    {k: s for k, s in AXES.items()},
    optional={"rom.style": st.sampled_from(STYLES), "quant": st.sampled_from(QUANTS)},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    variant=st.integers(0, len(VARIANTS) - 1),
    axes=st.sets(st.sampled_from(sorted(AXES)), min_size=1, max_size=8),
    designs=st.lists(design, min_size=1, max_size=4),
    prompt=st.lists(st.integers(1, 3000), min_size=4, max_size=4),
    gen=st.lists(st.integers(1, 400), min_size=4, max_size=4),
    cat=st.sets(st.sampled_from(["rom.style", "quant"])),
    train=st.booleans(),
)
def test_batched_equals_scalar(preset, variant, axes, designs, prompt, gen, cat, train):
    model, base = _model(PRESETS[preset]), _base(preset, variant)
    keys = sorted(axes) + sorted(cat)
    n = len(designs)
    fill = {"rom.style": base.rom.style, "quant": "w4g128"}
    params = {}
    for k in keys:
        vals = [d.get(k, fill.get(k)) for d in designs]
        params[k] = np.array(vals, dtype=object if k in fill else None)
    P, G = np.array(prompt[:n]), np.array(gen[:n])
    r = evaluate_batch(base, model, params, P, G, train=train)
    assert set(r.fields) == set(FIELDS) - (set() if train else set(TRAIN_FIELDS))
    for i in range(n):
        ov = {k: (params[k][i].item() if hasattr(params[k][i], "item") else params[k][i])
              for k in keys}  # fmt: skip
        ref = _scalar_or_none(model, base, ov, int(P[i]), int(G[i]), train)
        assert bool(r.valid[i]) == (ref is not None), ov
        if ref is None:
            assert all(math.isnan(r.fields[k][i]) for k in ("ttft_s", "area_mm2"))
            continue
        assert r.evaluated[i]
        for k, x in ref.items():
            assert _close(x, r.fields[k][i]), (k, x, r.fields[k][i], ov, int(P[i]), int(G[i]))


def test_presets_exact_and_scalar_workload():
    for preset, mname in PRESETS.items():
        base, model = load_chip(preset), _model(mname)
        out = evaluate_designs(base, model, {"mesh.cols": np.array([16])}, 128, 128)
        ref = scalar_fields(model, base, 128, 128)
        for k, x in ref.items():
            assert _close(x, out[k][0]), k
        assert out["valid"][0] and out["evaluated"][0]
        assert set(out) == set(FIELDS) - set(TRAIN_FIELDS) | {"valid", "evaluated"}


def test_prune_counts_match_scalar_misfits():
    base, model = load_chip("roma-8b-w2"), _model("llama-3-8b")
    rng = np.random.default_rng(0)
    n = 24
    params = {
        "rom.macro_rows": rng.integers(6000, 14000, n),
        "cell.cells_per_unit": rng.integers(64, 128, n),
        "mesh.cols": rng.integers(12, 18, n),
    }
    full = evaluate_batch(base, model, params)
    r = evaluate_batch(base, model, params, prune={"fits_rom": True, "area_mm2_max": 1e9})
    misfit = []
    for i in range(n):
        ov = {k: int(v[i]) for k, v in params.items()}
        misfit.append(not scalar_fields(model, base.with_overrides(**ov), 128, 128)["fits_rom"])
    misfit = np.array(misfit)
    assert 0 < misfit.sum() < n
    assert r.pruned["fits_rom"] == int(misfit.sum())
    assert r.pruned["area_mm2_max"] == 0
    assert np.array_equal(r.evaluated, ~misfit)
    assert np.all(np.isnan(r.fields["decode_tokens_per_s"][misfit]))
    for k in CHEAP_FIELDS:
        assert np.array_equal(r.fields[k], full.fields[k])
    ok = ~misfit
    assert np.array_equal(r.fields["ttft_s"][ok], full.fields["ttft_s"][ok])
    # an area bound: exactly the designs above it are dropped (after the ROM-fit ones)
    cap = float(np.median(full.fields["area_mm2"]))
    r2 = evaluate_batch(base, model, params, prune={"fits_rom": True, "area_mm2_max": cap})
    over = full.fields["area_mm2"] > cap
    assert r2.pruned["area_mm2_max"] == int((over & ~misfit).sum())


def test_invalid_designs_do_not_crash():
    base, model = load_chip("roma-3b-w4"), _model("llama-3.2-3b")
    params = {
        "mesh.rows": np.array([17, 2, 17, 17, 17]),
        "mesh.vector_rows": np.array([1, 2, 1, 1, 1]),
        "tech.process_nm": np.array([7, 7, 9, 7, 7]),
        "rom.macro_rows": np.array([9728, 9728, 9728, 8.5, 9728]),
        "quant": np.array(["w4g128", "w4g128", "w4g128", "w4g128", "bogus"], dtype=object),
    }
    r = evaluate_batch(base, model, params, prompt_len=np.array([128, 128, 128, 128, 0]))
    assert r.valid.tolist() == [True, False, False, False, False]
    assert r.pruned["invalid"] == 4
    assert np.isnan(r.fields["ttft_s"][1:]).all() and not r.fields["fits_rom"][1:].any()


def test_mixed_quant_falls_back_to_scalar():
    base, model = load_chip("roma-3b-w4"), _model("llama-3.2-3b")
    params = {"quant": np.array(["w3g128+w6x0.25", "w4g128"], dtype=object)}
    r = evaluate_batch(base, model, params, train=True)
    for i, q in enumerate(params["quant"]):
        ref = scalar_fields(model, base.with_overrides(quant=q), 128, 128, train=True)
        for k, x in ref.items():
            assert _close(x, r.fields[k][i]), (q, k)


def test_unknown_key_and_bad_shapes_refused():
    base, model = load_chip("roma-3b-w4"), _model("llama-3.2-3b")
    with pytest.raises(RomsimInputError):
        evaluate_batch(base, model, {"mesh.nope": np.array([1])})
    with pytest.raises(RomsimInputError):
        evaluate_batch(base, model, {"mesh.rows": np.array([17]), "mesh.cols": np.array([1, 2])})
