from hypothesis import given, settings
from hypothesis import strategies as st

from romsim.config import chip_from_dict, load_chip
from romsim.mapping import Mapping
from romsim.modelspec import load_model


def _small_chip(cells_per_unit, bits):
    return chip_from_dict(
        {
            "quant": f"w{bits}g128",
            "cell": {"cells_per_unit": cells_per_unit},
            "mesh": {"rows": 3, "cols": 4, "vector_rows": 1},
        }
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 37), st.sampled_from([2, 3, 4, 8]))
def test_group_ranges_partition_every_matrix(cells_per_unit, bits):
    chip = _small_chip(cells_per_unit, bits)
    mp = Mapping(load_model("smollm2-135m"), chip)
    for m in mp.matrices[:9]:
        pos = 0
        for c in range(chip.n_cells):
            s, e = m.group_range(c)
            assert s == pos and e - s == m.groups_in_cell(c)
            pos = e
        assert pos == m.n_groups


def test_rows_per_cell_matches_cell_layout():
    chip = _small_chip(5, 3)
    mp = Mapping(load_model("smollm2-135m"), chip)
    for c in (0, 7, chip.n_cells - 1):
        layout = mp.cell_layout(c)
        last_m, s, e, row = layout[-1]
        assert row + last_m.rom_rows(e - s) == mp.rows_per_cell[c]


def test_rotation_balances_rom_across_cells():
    chip = load_chip("roma-8b-w2")
    r = Mapping(load_model("llama-3-8b"), chip).rows_per_cell
    assert r.max() - r.min() <= 8  # within a few words thanks to rotation
    assert r.max() <= chip.rom.macro_rows  # the 8B INT2 model fits the paper's ROM
