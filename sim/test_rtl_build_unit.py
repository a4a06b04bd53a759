"""`romsim rtl build --unit U` emits a whole matrix unit (its cells, the reduction across them,
the shared activation buffer) and `--rom-style` picks the ROM inside the cells."""

from __future__ import annotations

import json

from romsim.cli import main


def test_rtl_build_unit_emits_the_matrix_unit(tmp_path, capsys):
    out = tmp_path / "rtl"
    argv = ["rtl", "build", "--tile", "smollm2-135m:0:k:0", "--unit", "1", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "cells: 8" in text  # the default small chip's 8 cells per unit
    (build,) = [p for p in out.iterdir() if p.is_dir()]
    info = json.loads((build / "build.json").read_text())
    assert [t.split(":")[-1] for t in info["meta"]["tiles"]] == [str(c) for c in range(8, 16)]
    assert info["row_sums"] is True and len(info["cells"]) == 8  # the unit reduction is in
    assert (build / "romsim_rowblock.v").stat().st_size > 0


def test_rtl_build_unit_bad_index_is_one_line(capsys):
    assert main(["rtl", "build", "--unit", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("romsim: error:") and "\n" not in err
