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

Mixed widths (a format with ``mix``: a fraction ``f`` of the groups at a second width). The
wide groups are spread evenly over the matrix in row-major order: of ``G`` groups,
``G2 = round(f * G)`` are wide, group ``i`` being wide when ``floor((i+1) * G2 / G) > floor(i *
G2 / G)`` (:meth:`MatrixTiles.wide_mask`). The matrix is dealt as two sub-matrices of groups, in
the order above: the narrow groups (row-major among themselves) are dealt like a matrix of their
own starting at the matrix's rotation, then the wide groups starting where the narrow run's extra
cells ended. So every cell holds the same number of wide groups to within one, the cells given an
extra wide group are the ones *after* those given an extra narrow group (they coincide only when
the two extras together exceed the cell count), and the next matrix's rotation is unchanged
(``(e1 + e2) % C == G % C``). Each cell stores its narrow run (codes, then metadata from a fresh
word) then its wide run (rule 8 of :mod:`romsim.rom.layout`), so ``rows_per_cell`` is exact. Why
two sub-matrices rather than fractional expected words per group: the cycles the perf model
charges are the busiest cell's whole words, and with ~3 groups of a matrix per cell (LLaMA-3.2-3B
on ROMA) the per-cell wide count is 0 or 1, far from ``3 f``; only an exact deal gives the busiest
cell. :meth:`MatrixTiles.rom_rows` of ``max_groups_per_cell`` is the busiest cell's words (the most
any cell holding that many groups needs), which is what the performance model reads.

The performance model charges a matrix the cycles of its busiest cell; the ROM image lays words
out exactly this way; the RTL holds one cell's run of one matrix (both single-width only).

Vocabulary tables (``placement``): the input embedding (``placement.embed = "rom"``) is the
matrix ``"embed"`` (vocab x hidden, first in execution order: the lookup comes first), the LM
head (``placement.lm_head = "rom"``) the matrix ``"lm_head"`` (last). A tied table
(``tie_word_embeddings``) placed in ROM for both is stored once, as ``"lm_head"``, and the
lookup reads its rows (:attr:`Mapping.lookup_tiles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from romsim.config import ChipConfig
from romsim.errors import RomsimInputError
from romsim.modelspec import LINEAR_KINDS, ModelSpec
from romsim.quant import WeightFormat, rom_tables
from romsim.rom.layout import RomLayout


def deal_range(n_groups: int, n_cells: int, rot: int, cell: int) -> tuple[int, int]:
    """Groups ``[start, stop)`` of a run of ``n_groups`` dealt contiguously to ``n_cells`` cells,
    the ``n_groups % n_cells`` extra groups going to the cyclic run of cells from ``rot``."""
    c, n = cell, n_cells
    b, e = divmod(n_groups, n)
    end = rot + e
    if end <= n:
        before = min(max(c - rot, 0), e)
    else:  # run wraps: [rot, n) and [0, end-n)
        before = min(c, end - n) + max(c - rot, 0)
    start = c * b + before
    return start, start + b + (1 if (c - rot) % n < e else 0)


def wide_groups(n_groups: int, fraction: float) -> int:
    """Wide groups of a mixed matrix: ``round(fraction * n_groups)`` (halves up)."""
    return min(n_groups, max(0, int(math.floor(fraction * n_groups + 0.5))))


@dataclass(frozen=True)
class GroupRun:
    """One class of a matrix's groups (all of them, or a mix's narrow or wide ones) dealt to the
    cells: ``n_groups`` groups in ``layout``, extra groups to the cells from ``rot``."""

    layout: RomLayout
    n_groups: int
    n_cells: int
    rot: int

    @property
    def base(self) -> int:
        return self.n_groups // self.n_cells

    @property
    def extra(self) -> int:
        return self.n_groups % self.n_cells

    @property
    def max_groups(self) -> int:
        return self.base + (1 if self.extra else 0)

    def groups_in_cell(self, cell: int) -> int:
        return self.base + (1 if (cell - self.rot) % self.n_cells < self.extra else 0)

    def group_range(self, cell: int) -> tuple[int, int]:
        """This class's group indices (counted within the class) that ``cell`` holds."""
        return deal_range(self.n_groups, self.n_cells, self.rot, cell)

    def cell_counts(self) -> np.ndarray:
        """Groups of this class in every cell (``int64[n_cells]``)."""
        c = np.arange(self.n_cells)
        return self.base + ((c - self.rot) % self.n_cells < self.extra).astype(np.int64)


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
        """Extra groups over all classes, mod the cell count: the next matrix's rotation
        advances by this."""
        return self.n_groups % self.n_cells

    @property
    def is_mixed(self) -> bool:
        return self.fmt.mix is not None

    @property
    def n_wide(self) -> int:
        """Groups at ``fmt.mix.bits`` (0 without a mix)."""
        return wide_groups(self.n_groups, self.fmt.mix.fraction) if self.fmt.mix else 0

    @cached_property
    def runs(self) -> tuple[GroupRun, ...]:
        """The classes of groups as dealt: one run, or a mix's narrow run then its wide run."""
        if self.fmt.mix is None:
            return (GroupRun(self.layout, self.n_groups, self.n_cells, self.rot),)
        wide_fmt = self.fmt.mix_format
        assert wide_fmt is not None
        n1 = self.n_groups - self.n_wide
        narrow = GroupRun(self.layout, n1, self.n_cells, self.rot)
        wide = GroupRun(
            RomLayout.for_format(wide_fmt, self.word_bits),
            self.n_wide,
            self.n_cells,
            (self.rot + narrow.extra) % self.n_cells,
        )
        return (narrow, wide)

    def wide_mask(self) -> np.ndarray:
        """``bool[n_groups]``, row-major: which groups are at the mix's width."""
        i = np.arange(self.n_groups, dtype=np.int64)
        g, w = self.n_groups, self.n_wide
        return ((i + 1) * w // g) > (i * w // g)

    @property
    def max_groups_per_cell(self) -> int:
        if len(self.runs) == 1:
            return self.base + (1 if self.extra else 0)
        a, b = self.runs
        e = a.extra + b.extra
        return a.base + b.base + (1 if e else 0) + (1 if e > self.n_cells else 0)

    @cached_property
    def layout(self) -> RomLayout:
        """The matrix's ROM word layout at the chip's word width (a mix: its narrow class)."""
        return RomLayout.for_format(self.fmt, self.word_bits)

    @property
    def words_per_group(self) -> int:
        return self.layout.words_per_group

    @property
    def metas_per_word(self) -> int:
        return self.layout.metas_per_word

    def _max_split(self, n: int, cost) -> int:
        """Max of ``cost(run, groups)`` summed over a mix's two runs, over the splits of ``n``
        groups that a cell of this deal can hold (each run gives its base or base + 1)."""
        a, b = self.runs
        lo = max(b.base, n - a.max_groups)
        hi = min(b.max_groups, n - a.base)
        if lo > hi:  # no cell of this deal holds n groups: as many wide ones as fit
            lo = hi = max(0, min(n, b.max_groups))
        return max(int(cost(a, n - w)) + int(cost(b, w)) for w in range(lo, hi + 1))

    def rom_rows(self, n_groups: int | np.ndarray) -> int | np.ndarray:
        """ROM words a cell needs for ``n_groups`` groups of this matrix (codes + metadata).
        A mix: the most words any cell of this deal holding ``n_groups`` groups needs, so
        ``rom_rows(max_groups_per_cell)`` is the busiest cell's words."""
        if len(self.runs) == 1:
            return self.layout.rom_rows(n_groups)
        if isinstance(n_groups, np.ndarray):
            return np.vectorize(self.rom_rows, otypes=[np.int64])(n_groups)
        return self._max_split(int(n_groups), lambda r, k: r.layout.rom_rows(k))

    @property
    def max_rom_rows_per_cell(self) -> int:
        """Words of this matrix in its busiest cell (what the perf model charges)."""
        return int(self.rom_rows(self.max_groups_per_cell))

    def cell_rom_rows(self, cell: int) -> int:
        """Words of this matrix in ``cell`` (exact, every class's run)."""
        return sum(int(r.layout.rom_rows(r.groups_in_cell(cell))) for r in self.runs)

    @property
    def max_cell_code_bits(self) -> int:
        """Code bits (before word padding) of the busiest cell's groups: the weight bits its MAC
        array consumes (``max_groups_per_cell * group_size * bits`` for one width)."""
        if len(self.runs) == 1:
            return self.max_groups_per_cell * self.layout.group_bits
        return self._max_split(self.max_groups_per_cell, lambda r, k: k * r.layout.group_bits)

    @property
    def total_rom_rows(self) -> int:
        """ROM words of the whole matrix over all cells (each cell pads its own metadata):
        the words the image holds (``rows_per_cell`` sums these)."""
        n = self.n_cells
        return sum(
            (n - r.extra) * int(r.layout.rom_rows(r.base))
            + r.extra * int(r.layout.rom_rows(r.base + 1))
            for r in self.runs
        )

    def dense_words(self) -> float:
        """Words of the whole matrix with metadata at its packing density (the energy counter's
        count, :meth:`romsim.rom.layout.RomLayout.dense_words`, summed over a mix's classes)."""
        return float(sum(r.layout.dense_words(r.n_groups) for r in self.runs))

    def groups_in_cell(self, cell: int) -> int:
        return sum(r.groups_in_cell(cell) for r in self.runs)

    def group_range(self, cell: int) -> tuple[int, int]:
        """Row-major group indices ``[start, stop)`` that ``cell`` holds (one width only; a
        mix's cell holds two runs: :meth:`run_ranges`)."""
        if len(self.runs) != 1:
            raise RomsimInputError(
                "quant",
                self.fmt.label(),
                "a mixed-width matrix is counted only (mapping, perf, area); the ROM image, "
                "kernels and RTL hold single-width matrices",
            )
        return deal_range(self.n_groups, self.n_cells, self.rot, cell)

    def run_ranges(self, cell: int) -> list[tuple[GroupRun, int, int]]:
        """(run, start, stop) of every class in ``cell``, indices counted within the class."""
        return [(r, *r.group_range(cell)) for r in self.runs]


class Mapping:
    """All matrices of a model on a chip, in execution order."""

    def __init__(self, model: ModelSpec, chip: ChipConfig):
        self.model = model
        self.chip = chip
        self.n_cells = chip.n_cells
        word_bits = chip.rom.word_bits
        mats: list[MatrixTiles] = []
        rot = 0
        tables = rom_tables(
            model, chip.quant, chip.placement.lm_head == "rom", chip.placement.embed == "rom"
        )
        vocab = (model.vocab_size, model.hidden_size)
        specs: list[tuple[str, int, str, tuple[int, int], WeightFormat]] = [
            (kind, -1, kind, vocab, fmt) for kind, fmt in tables if kind == "embed"
        ]
        specs += [
            (
                f"layers.{layer}.{kind}",
                layer,
                kind,
                model.linear_shape(kind),
                chip.quant.for_kind(kind),
            )
            for layer in range(model.n_layers)
            for kind in LINEAR_KINDS
        ]
        specs += [(kind, -1, kind, vocab, fmt) for kind, fmt in tables if kind == "lm_head"]
        for i, (name, layer, kind, (n, k), fmt) in enumerate(specs):
            m = MatrixTiles(i, name, layer, kind, n, k, fmt, self.n_cells, rot, word_bits)
            mats.append(m)
            rot = (rot + m.extra) % self.n_cells
        self.matrices = mats

    @property
    def lookup_tiles(self) -> MatrixTiles | None:
        """The ROM table the embedding lookup reads (``"embed"``, or a tied ``"lm_head"`` stored
        once), None when the embedding is not in ROM."""
        if self.chip.placement.embed != "rom":
            return None
        return next((m for m in self.matrices if m.kind in ("embed", "lm_head")), None)

    def layer_matrices(self, layer: int = 0) -> list[MatrixTiles]:
        return [m for m in self.matrices if m.layer == layer]

    @cached_property
    def rows_per_cell(self) -> np.ndarray:
        """ROM words each cell uses (vectorized over matrices and cells with a difference array)."""
        n = self.n_cells
        runs = [r for m in self.matrices for r in m.runs]  # every class of every matrix
        extra = np.array([r.extra for r in runs], dtype=np.int64)
        rot = np.array([r.rot for r in runs], dtype=np.int64)
        lo = np.array([r.layout.rom_rows(r.base) for r in runs], dtype=np.int64)
        hi = np.array([r.layout.rom_rows(r.base + 1) for r in runs], dtype=np.int64)
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

    def cell_rom_rows(self, cell: int) -> int:
        """Words ``cell`` uses, summed matrix by matrix (mixes included; ``rows_per_cell`` is
        the vectorized form)."""
        return sum(m.cell_rom_rows(cell) for m in self.matrices)
