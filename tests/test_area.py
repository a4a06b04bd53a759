import json
from importlib import resources

from romsim.area.model import ablation_um2, cell_area_mm2, cell_compute_gates
from romsim.config import load_chip


def test_area_model_uses_the_synthesis_calibration():
    cal = json.loads(resources.files("romsim.area").joinpath("synth_calibration.json").read_text())
    chip = load_chip("roma-3b-w4")  # 4-bit weights
    assert cell_compute_gates(chip, "brom") == cal["styles"]["fused"]["4"]["nand2_eq"]
    assert cell_compute_gates(chip, "rom") == cal["styles"]["conventional"]["4"]["nand2_eq"]
    two = load_chip("roma-8b-w2")
    assert cell_compute_gates(two, "brom") == cal["styles"]["fused"]["2"]["nand2_eq"]


def test_fused_cell_never_larger_than_side_by_side():
    chip = load_chip("roma-3b-w4")
    ab = ablation_um2(chip)
    assert ab["fused_cell"] <= ab["brom_compute"] < ab["rom_compute"] < ab["sram_compute"]
    assert cell_area_mm2(chip)["cell_mm2"] * 1e6 == ab["fused_cell"]
