"""Synthesis calibration file, Yosys gate weights, and the tile/ROM-image agreement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from romsim.rtl import synth


def test_calibration_file_schema():
    cal = json.loads(synth.CALIBRATION_PATH.read_text())
    assert cal["schema"] == synth.SCHEMA
    assert cal["yosys_version"].startswith(synth.YOSYS_PINNED)
    for style in ("fused", "conventional"):
        for bits in ("2", "3", "4", "8"):
            e = cal["styles"][style][bits]
            recomputed = sum(synth.gate_weight(c) * n for c, n in e["yosys_cells"].items())
            assert e["nand2_eq"] == pytest.approx(recomputed, abs=0.1)
            assert e["um2"] == pytest.approx(e["nand2_eq"] * cal["nand2_um2"], rel=1e-3)


def test_parse_stat_and_weights():
    log = """
   Number of cells:                 12
     $_AND_                          3
     $_SDFFE_PP0P_                   2
     $_XOR_                          7

"""
    cells = synth.parse_stat(log)
    assert cells == {"$_AND_": 3, "$_SDFFE_PP0P_": 2, "$_XOR_": 7}
    assert synth.gate_weight("$_NAND_") == 1.0
    assert synth.gate_weight("$_SDFFE_PP0P_") > synth.gate_weight("$_DFF_P_")
    with pytest.raises(KeyError):
        synth.gate_weight("$_FOO_")


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys missing")
def test_synth_reproduces_calibration():
    """`romsim rtl synth` on the 8-bit fused cell gives the numbers the area model reads."""
    if not synth.yosys_version().startswith(synth.YOSYS_PINNED):
        pytest.skip("calibration pinned to yosys 0.23")
    cal = json.loads(synth.CALIBRATION_PATH.read_text())
    r = synth.synth_core(synth.synth_params(8), "fused")
    assert r.as_dict()["yosys_cells"] == cal["styles"]["fused"]["8"]["yosys_cells"]


@pytest.mark.parametrize("word_bits", [64, 32])
def test_tile_words_match_rom_image_cell_image(word_bits):
    """The RTL's tile = the per-matrix slice of romsim.rom.cell_image (layer 0, so a one-layer
    mapping has the same group runs as the full model's), at 64- and 32-bit ROM words."""
    from dataclasses import replace

    from romsim.rtl.tile import make_tile, matrix_qtensor, small_chip

    from romsim.mapping import Mapping
    from romsim.modelspec import LINEAR_KINDS, load_model
    from romsim.rom import RomImage, cell_image

    chip = small_chip(
        4,
        cell={"cells_per_unit": 7},
        placement={"lm_head": "off_chip"},
        rom={"word_bits": word_bits},
    )
    spec = replace(load_model("smollm2-135m"), n_layers=1)
    img = RomImage()
    for kind in LINEAR_KINDS:
        img.add(f"layers.0.{kind}", matrix_qtensor("smollm2-135m", 0, kind, 4, 128)[0])
    mapping = Mapping(spec, chip)
    for cell in (0, 11, 55):
        words = cell_image(img, mapping, cell)
        for mt, start, stop, row in mapping.cell_layout(cell):
            t = make_tile("smollm2-135m", 0, mt.kind, cell, bits=4, chip=chip)
            assert (t.start, t.stop) == (start, stop)
            assert np.array_equal(t.words, words[row : row + t.words.size])
