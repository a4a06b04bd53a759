import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from romsim.modelspec import load_model
from romsim.quant import QuantSpec, WeightFormat, model_rom_bytes, named_quant


def test_8b_int2_g128_is_the_papers_rom_size():
    # DESIGN: 8B linear layers at INT2/g128 ~ 1.87 GB
    b = model_rom_bytes(load_model("llama-3-8b"), named_quant("w2g128"), lm_head_in_rom=False)
    assert abs(b / 1.87e9 - 1) < 0.005


@pytest.mark.parametrize(
    "name,bpw",
    [
        ("w4g128", 4 + 20 / 128),
        ("w2g128", 2 + 18 / 128),
        ("w3g64", 3 + 19 / 64),
        ("w8g128", 8 + 24 / 128),
        ("q4_0", 4.5),
        ("q4_1", 5.0),
        ("q8_0", 8.5),
        ("nf4", 4 + 16 / 64),
    ],
)
def test_bits_per_weight(name, bpw):
    assert named_quant(name).default.bits_per_weight == pytest.approx(bpw)


def test_per_layer_overrides():
    q = named_quant("w4attn-w2mlp")
    assert q.for_kind("q").bits == 4 and q.for_kind("down").bits == 2
    m = load_model("llama-3.2-3b")
    mixed = model_rom_bytes(m, q, False)
    assert (
        model_rom_bytes(m, named_quant("w2g128"), False)
        < mixed
        < model_rom_bytes(m, named_quant("w4g128"), False)
    )


@given(
    st.sampled_from([2, 3, 4, 8]),
    st.sampled_from([2, 3, 4, 8]),
    st.sampled_from([32, 64, 128, 256]),
)
def test_more_bits_never_less_rom(b1, b2, g):
    m = load_model("smollm2-135m")
    lo, hi = sorted((b1, b2))
    r_lo = model_rom_bytes(m, QuantSpec(default=WeightFormat(bits=lo, group_size=g)), True)
    r_hi = model_rom_bytes(m, QuantSpec(default=WeightFormat(bits=hi, group_size=g)), True)
    assert r_hi >= r_lo


def test_invalid_formats():
    with pytest.raises(ValidationError):
        WeightFormat(kind="q4_0", bits=2)
    with pytest.raises(ValidationError):
        WeightFormat(bits=7)
    with pytest.raises(ValidationError):
        QuantSpec(overrides={"attention": WeightFormat()})
