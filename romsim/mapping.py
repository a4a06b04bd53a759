"""The one definition of how weights are tiled onto fused cells.

Every matrix W[N, K] (row = output) is cut into quantization groups: ``group_size`` consecutive
weights of one row. Groups are numbered row-major (row n, then k-group). The groups of a matrix
are dealt to the chip's C cells in contiguous runs: every cell gets ``G // C`` groups and
``G % C`` cells get one more. Which cells get the extra group rotates from matrix to matrix (the
run of "extra" cells starts where the previous matrix's run ended), so over a whole model every
cell holds the same number of groups to within one per format. Cell ``c`` holds the groups
``[start, stop)`` of each matrix, in matrix execution order, each group word-aligned, followed by
the run's metadata words; the word counts come from :class:`romsim.rom.layout.RomLayout` (rule 6
there: ``rom_rows(n) = n * words_per_group + ceil(n / metas_per_word) * words_per_meta``).

The performance model charges a matrix the cycles of its busiest cell; the ROM image lays words
out exactly this way; the RTL holds one cell's run of one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from romsim.config import ChipConfig
from romsim.modelspec import LINEAR_KINDS, ModelSpec
from romsim.quant import WeightFormat
from romsim.rom.layout import RomLayout


@dataclass(frozen=True)
class MatrixTiles:
    """How one matrix is spread over the cells."""

    index: int  # position in execution order
    name: str  # e.g. "layers.3.down" or "lm_head"
    layer: int  # -1 for lm_head
    kind: str
    rows: int  # N (out features)
    cols: int  # K (in features)
    fmt: WeightFormat
    n_cells: int
    rot: int  # first cell of the run that gets an extra group
    word_bits: int

    @property
    def groups_per_row(self) -> int:
        return -(-self.cols // self.fmt.group_size)

    @property
    def n_groups(self) -> int:
        return self.rows * self.groups_per_row

    @property
    def base(self) -> int:
        return self.n_groups // self.n_cells

    @property
    def extra(self) -> int:
        return self.n_groups % self.n_cells

    @property
    def max_groups_per_cell(self) -> int:
        return self.base + (1 if self.extra else 0)

    @cached_property
    def layout(self) -> RomLayout:
        """The matrix's ROM word layout at the chip's word width."""
        return RomLayout.for_format(self.fmt, self.word_bits)

    @property
    def words_per_group(self) -> int:
        return self.layout.words_per_group

    @property
    def metas_per_word(self) -> int:
        return self.layout.metas_per_word

    def rom_rows(self, n_groups: int | np.ndarray) -> int | np.ndarray:
        """ROM words a cell needs for ``n_groups`` groups of this matrix (codes + metadata)."""
        return self.layout.rom_rows(n_groups)

    @property
    def total_rom_rows(self) -> int:
        """ROM words of the whole matrix over all cells (each cell pads its own metadata):
        the words the image holds (``rows_per_cell`` sums these)."""
        n, e, b = self.n_cells, self.extra, self.base
        return (n - e) * int(self.rom_rows(b)) + e * int(self.rom_rows(b + 1))

    def groups_in_cell(self, cell: int) -> int:
        return self.base + (1 if (cell - self.rot) % self.n_cells < self.extra else 0)

    def group_range(self, cell: int) -> tuple[int, int]:
        """Row-major group indices ``[start, stop)`` that ``cell`` holds."""
        c, n, e, r = cell, self.n_cells, self.extra, self.rot
        # number of "extra" cells with index < c in the cyclic run [r, r+e)
        end = r + e
        if end <= n:
            before = min(max(c - r, 0), e)
        else:  # run wraps: [r, n) and [0, end-n)
            before = min(c, end - n) + max(c - r, 0)
        start = c * self.base + before
        return start, start + self.groups_in_cell(cell)


class Mapping:
    """All matrices of a model on a chip, in execution order."""

    def __init__(self, model: ModelSpec, chip: ChipConfig):
        self.model = model
        self.chip = chip
        self.n_cells = chip.n_cells
        word_bits = chip.rom.word_bits
        mats: list[MatrixTiles] = []
        rot = 0
        specs = [
            (f"layers.{layer}.{kind}", layer, kind)
            for layer in range(model.n_layers)
            for kind in LINEAR_KINDS
        ]
        if chip.placement.lm_head == "rom":
            specs.append(("lm_head", -1, "lm_head"))
        for i, (name, layer, kind) in enumerate(specs):
            n, k = (
                (model.vocab_size, model.hidden_size)
                if kind == "lm_head"
                else model.linear_shape(kind)
            )
            m = MatrixTiles(
                i, name, layer, kind, n, k, chip.quant.for_kind(kind), self.n_cells, rot, word_bits
            )
            mats.append(m)
            rot = (rot + m.extra) % self.n_cells
        self.matrices = mats

    def layer_matrices(self, layer: int = 0) -> list[MatrixTiles]:
        return [m for m in self.matrices if m.layer == layer]

    @cached_property
    def rows_per_cell(self) -> np.ndarray:
        """ROM words each cell uses (vectorized over matrices and cells with a difference array)."""
        n = self.n_cells
        ms = self.matrices
        extra = np.array([m.extra for m in ms], dtype=np.int64)
        rot = np.array([m.rot for m in ms], dtype=np.int64)
        lo = np.array([m.rom_rows(m.base) for m in ms], dtype=np.int64)
        hi = np.array([m.rom_rows(m.base + 1) for m in ms], dtype=np.int64)
        d = np.where(extra > 0, hi - lo, 0)
        end = rot + extra
        wrap = end > n
        diff = np.zeros(n + 1, dtype=np.int64)
        np.add.at(diff, rot, d)
        np.add.at(diff, np.where(wrap, n, end), -d)
        np.add.at(diff, np.zeros_like(rot), np.where(wrap, d, 0))
        np.add.at(diff, np.where(wrap, end - n, 0), np.where(wrap, -d, 0))
        return int(lo.sum()) + np.cumsum(diff[:n])

    @property
    def max_rows_per_cell(self) -> int:
        return int(self.rows_per_cell.max())

    @property
    def rom_bytes_needed(self) -> int:
        """ROM the chip would need if every cell were as full as the fullest one."""
        return self.max_rows_per_cell * self.n_cells * self.chip.rom.word_bits // 8

    @property
    def rom_bytes_used(self) -> int:
        """Physical ROM bytes the image occupies (word padding included)."""
        return int(self.rows_per_cell.sum()) * self.chip.rom.word_bits // 8

    def cell_layout(self, cell: int) -> list[tuple[MatrixTiles, int, int, int]]:
        """(matrix, group start, group stop, first ROM row) for every matrix in ``cell``."""
        out = []
        row = 0
        for m in self.matrices:
            start, stop = m.group_range(cell)
            out.append((m, start, stop, row))
            row += int(m.rom_rows(stop - start))
        return out
