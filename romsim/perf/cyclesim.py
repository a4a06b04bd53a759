"""A cycle-level simulation of one decode matmul on the mesh, to check the analytical model.

The analytical model (romsim.perf.model) charges a matmul ``latency + max(stage loads)``. Here
the same hardware is stepped through explicitly, cell by cell and group by group:

- the activation vector streams down each mesh column at ``link_bytes_per_cycle``; a cell ``h``
  hops from the vector row sees group ``k`` after ``h * hop_latency + (k+1) * group_bytes / link``;
- a cell processes its groups (romsim.mapping) in order: a group starts when its activations are
  there and the previous group is done, and takes ``words_per_group`` ROM cycles; a metadata word
  (``words_per_meta`` words when a field is wider than a word) is read before every
  ``metas_per_word``-th group;
- when a row segment ends, its partial sum leaves the cell after ``pipeline_depth`` cycles, the
  unit's adder tree merges the partials of the same row from its cells (``adder_tree_cycles``),
  and the merged partial travels its ``h`` hops to the vector row, where each column's port takes
  one partial per ``acc_bytes / link`` cycles, in arrival order.

The op ends when the last partial has passed its port. No term of the analytical formula is
used here, so the two can be compared (tests/test_cyclesim.py, docs/validation.md).
"""

from __future__ import annotations

import numpy as np

from romsim.mapping import MatrixTiles
from romsim.perf.model import PerfModel


def _unit_geometry(pm: PerfModel) -> tuple[np.ndarray, np.ndarray]:
    """Column and hop distance of every matrix unit (rows above, then below the vector row)."""
    mesh = pm.chip.mesh
    U, cols = mesh.matrix_units, mesh.cols
    unit_rows = mesh.rows - mesh.vector_rows
    above = unit_rows // 2
    u = np.arange(U)
    r = u // cols
    col = u % cols
    hops = np.where(r < above, above - r, r - above + 1)
    return col, hops


def simulate_matmul_cycles(pm: PerfModel, tiles: list[MatrixTiles]) -> float:
    """Cycles of one decode matmul (matrices sharing one input) by explicit simulation."""
    chip = pm.chip
    ic = chip.interconnect
    link = ic.link_bytes_per_cycle
    n_cells = chip.n_cells
    cpu = chip.cell.cells_per_unit
    col_of_unit, hops_of_unit = _unit_geometry(pm)
    cell_unit = np.arange(n_cells) // cpu
    cell_hops = hops_of_unit[cell_unit]
    gs = tiles[0].fmt.group_size
    group_bytes = gs * pm.d.act_bytes

    t = np.zeros(n_cells)
    ready_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (unit, row key, time)
    key_base = 0
    for m in tiles:
        gpr = m.groups_per_row
        counts = np.array([m.groups_in_cell(c) for c in range(n_cells)])
        starts = np.array([m.group_range(c)[0] for c in range(n_cells)])
        jmax = int(counts.max())
        wpg, mpw = m.words_per_group, m.metas_per_word
        for j in range(jmax):
            active = j < counts
            g = starts + j
            kgrp = g % gpr
            row = g // gpr
            arrive = cell_hops * ic.hop_latency_cycles + (kgrp + 1) * group_bytes / link
            meta = float(m.layout.words_per_meta) if j % mpw == 0 else 0.0
            start = np.maximum(t, arrive)
            t_new = start + meta + wpg
            # a row segment ends when the next group is in another row or the cell is done
            nxt_same = (j + 1 < counts) & ((g + 1) // gpr == row)
            seg_end = active & ~nxt_same
            idx = np.nonzero(seg_end)[0]
            ready_rows.append((cell_unit[idx], key_base + row[idx], t_new[idx]))
            t = np.where(active, t_new, t)
        key_base += m.rows
    units = np.concatenate([r[0] for r in ready_rows])
    keys = np.concatenate([r[1] for r in ready_rows])
    times = np.concatenate([r[2] for r in ready_rows])
    # merge partials of the same row inside a unit: ready when the last one is
    order = np.lexsort((keys, units))
    units, keys, times = units[order], keys[order], times[order]
    new = np.ones(len(units), dtype=bool)
    new[1:] = (units[1:] != units[:-1]) | (keys[1:] != keys[:-1])
    grp = np.cumsum(new) - 1
    merged_t = np.full(grp[-1] + 1, -np.inf)
    np.maximum.at(merged_t, grp, times)
    merged_u = units[new]
    leave = merged_t + chip.cell.pipeline_depth_cycles + chip.cell.tree_cycles
    arrive = leave + hops_of_unit[merged_u] * ic.hop_latency_cycles
    port = col_of_unit[merged_u]
    per_partial = chip.cell.acc_bits / 8 / link
    finish = 0.0
    for p in np.unique(port):
        a = np.sort(arrive[port == p])
        # single-server queue: f_i = max(a_i, f_{i-1}) + s  ==  max_j(a_j + (i-j+1) s)
        n = np.arange(1, len(a) + 1)
        f = np.maximum.accumulate(a - (n - 1) * per_partial) + n * per_partial
        finish = max(finish, float(f[-1]))
    return finish + ic.sync_cycles_per_op


def analytical_matmul_cycles(pm: PerfModel, tiles: list[MatrixTiles]) -> float:
    """The analytical model's cycles for the same op, without its LoRA path."""
    op = pm._matmul("check", "check", tiles, 1)
    return op.latency_cycles + max(a for a, _ in op.stages.values())
