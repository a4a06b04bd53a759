"""Parameters of a fused cell and the numeric layouts its RTL shares with the testbenches.

Pure Python + numpy (no Amaranth): the cocotb testbenches, the CLI and the benchmarks import this
without building hardware.

A cell reads one ROM word per cycle. The word layout is :mod:`romsim.rom.layout`'s
(:attr:`CellParams.layout`, a :class:`~romsim.rom.layout.RomLayout` at the cell's ``word_bits``):
a group's ``bits``-wide codes as a little-endian bit stream, each group word-aligned; then the
tile's metadata words, ``metas_per_word`` fields of ``16 + zero_bits`` bits (fp16 scale, then the
zero point), LSB first. The cell adds two rules of its own: a group fills whole words
(``group_size*bits`` a multiple of ``word_bits``, so no padding bits reach the lanes) and a
metadata field fits in one word.

Lanes. The MAC array has ``lanes`` multipliers; the codes a word *completes* (whose last bit lies
in it) go to lanes 0.. in order. For 2/4/8 bits a word holds ``word_bits/bits`` whole codes; for 3
bits codes straddle words, so the decoder keeps the previous word of the group and the pattern
repeats every ``period_words`` words (3 words = 64 codes: 21, 21, 22 codes per word, 22 lanes).
The activation beat that goes with a word carries the matching int8 mantissas in the same lanes
and zeros in unused lanes; :func:`act_group_entry` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from romsim.quant import NF4_FRAC_BITS, NF4_VALUES
from romsim.quant import TERNARY_TABLE as TERNARY_TABLE  # re-exported (romsim.rtl.cell)
from romsim.quant import nf4_fixed_table as nf4_fixed_table  # re-exported
from romsim.rom.layout import RomLayout

SCALE_BITS = 16  # fp16 scale field (romsim.quant: scale_bits default)
EXP_BITS = 9  # activation exponent field (signed) per k-group: the BFP quantizer gives [-155, 121]
# Cycles from the start cycle to the last partial sum, beyond one cycle per ROM word
# (romsim.rtl.cell documents the stages); the fused value equals FusedCellConfig's default
# pipeline_depth_cycles.
LATENCY_CYCLES = {"fused": 6, "conventional": 8}
# RowBlock(row_sums=True): cycles from the last fp32 partial to the last row sum presented
# (per-cell fp32 accumulate, piece register, row register with the split-row add)
ROW_SUM_CYCLES = 3
# Weight kinds of the cell's decoder (romsim.quant kinds): "affine" w = q - z (scale per group);
# "nf4" w = round(NF4[q] * 2**NF4_FRAC_BITS) from a 16-entry fixed-point codebook (the group's
# absmax scale in the metadata, 2**-NF4_FRAC_BITS folded into the dequantizer's exponent);
# "ternary" w = d - 1 for a digit d in {0, 1, 2} (2-bit codes, or 5 base-3 digits per byte),
# no per-group metadata, one per-tensor fp16 scale (``tensor_scale``) in the dequantizer.
CELL_KINDS = ("affine", "nf4", "ternary")
NF4_TABLE = NF4_VALUES  # bitsandbytes' NormalFloat-4 table (romsim.quant, the one copy)
# NF4_FRAC_BITS, nf4_fixed_table (the fixed-point codebook) and TERNARY_TABLE (digit -> weight)
# are romsim.quant's, shared with the kernels' integer path (romsim.kernels.codebook)


@dataclass(frozen=True)
class CellParams:
    """Elaboration parameters of one cell (and of its tile: ``n_groups``, ``kg0``, ``ng_row``)."""

    bits: int = 4
    group_size: int = 128
    word_bits: int = 64
    act_bits: int = 8
    acc_bits: int = 32
    n_groups: int = 16  # groups in the tile
    ng_row: int = 5  # groups per matrix row (K / group_size, rounded up)
    kg0: int = 0  # k-group index of the tile's first group (start % ng_row)
    depth: int = 0  # ROM depth in words (0: exactly the tile's words)
    zero_bits: int | None = None  # default: bits (affine)
    mac_weight_bits_per_cycle: int | None = None  # default: word_bits (one word per cycle)
    kind: str = "affine"  # CELL_KINDS
    packing: str = "bits"  # "bits" or "base3" (ternary: 5 trits per byte, romsim.rom.layout 3b)
    tensor_scale: int = 0  # ternary: the per-tensor fp16 scale bits (dequantizer register)
    _derived: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        b, g, w = self.bits, self.group_size, self.word_bits
        if b not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8 (got {b})")
        if self.kind not in CELL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(CELL_KINDS)} (got {self.kind!r})")
        if self.kind == "nf4" and (b != 4 or self.zero_bits not in (None, 0)):
            raise ValueError("nf4 cells take 4-bit codes and no zero point")
        if self.kind == "ternary" and (b != 2 or self.zero_bits not in (None, 0)):
            raise ValueError("ternary cells take 2-bit codes (digits) and no zero point")
        if self.packing not in ("bits", "base3"):
            raise ValueError(f"packing must be bits or base3 (got {self.packing!r})")
        if self.packing == "base3":
            if self.kind != "ternary":
                raise ValueError("base-3 packing is for ternary cells")
            if g % 5 or w % 8:
                raise ValueError("base-3 cells need group_size % 5 == 0 and word_bits % 8 == 0")
        if g < 1 or w < 1:
            raise ValueError(f"group_size and word_bits must be >= 1 (got {g}, {w})")
        if self.layout.group_bits % w:
            raise ValueError(
                f"group bits ({self.layout.group_bits}) must be a multiple of word_bits ({w}) "
                "for the RTL cell"
            )
        if self.mac_weight_bits_per_cycle not in (None, w):
            raise ValueError(
                "the RTL cell consumes one ROM word per cycle: mac_weight_bits_per_cycle must "
                f"equal word_bits ({w}), got {self.mac_weight_bits_per_cycle}"
            )
        if not 2 <= self.act_bits <= 16:
            raise ValueError(f"act_bits must be in [2, 16] (got {self.act_bits})")
        if self.n_groups < 1:
            raise ValueError(f"n_groups must be >= 1 (got {self.n_groups})")
        if not 0 <= self.kg0 < self.ng_row:
            raise ValueError(f"kg0 must be in [0, ng_row) (got {self.kg0}, ng_row {self.ng_row})")
        if self.meta_bits > w:
            raise ValueError(f"metadata field ({self.meta_bits} bits) wider than a word ({w})")
        need = self.t_bits
        if self.acc_bits < need:
            raise ValueError(f"acc_bits ({self.acc_bits}) < {need} bits needed for the group sums")
        if need > 25:
            raise ValueError(
                f"|T| needs {need} bits: the fp32 dequantizer is exact (as the kernel) only for "
                "|T| < 2**24 (act_bits <= 8 with 8-bit codes)"
            )
        if self.depth and self.depth < self.rom_rows:
            raise ValueError(f"depth ({self.depth}) < tile words ({self.rom_rows})")

    # ---- word layout (romsim.rom.layout) -------------------------------------------------------
    @property
    def zb(self) -> int:
        if self.kind != "affine":
            return 0
        return self.bits if self.zero_bits is None else self.zero_bits

    @property
    def has_meta(self) -> bool:
        """Per-group metadata words in ROM (not for ternary: one per-tensor scale)."""
        return self.kind != "ternary"

    @property
    def layout(self) -> RomLayout:
        sb = SCALE_BITS if self.has_meta else 0
        return RomLayout(self.bits, self.group_size, self.zb, sb, self.word_bits, self.packing)

    @property
    def weight_bits(self) -> int:
        """Magnitude bits of a decoded weight (the MAC takes ``weight_bits + 1`` signed): affine
        ``q - z``, nf4 the fixed-point codebook entry, ternary one bit."""
        if self.kind == "nf4":
            return NF4_FRAC_BITS + 1
        if self.kind == "ternary":
            return 1
        return max(self.bits, self.zb)

    @property
    def weight_max(self) -> int:
        """Largest |decoded weight| bound used for the accumulator width."""
        if self.kind == "nf4":
            return 1 << NF4_FRAC_BITS
        if self.kind == "ternary":
            return 1
        return ((1 << self.bits) - 1) + ((1 << self.zb) - 1)

    @property
    def exp_offset(self) -> int:
        """Added to the activation exponent in the dequantizer (nf4: -NF4_FRAC_BITS)."""
        return -NF4_FRAC_BITS if self.kind == "nf4" else 0

    @property
    def meta_bits(self) -> int:
        return self.layout.meta_bits

    @property
    def metas_per_word(self) -> int:
        return self.layout.metas_per_word

    @property
    def words_per_group(self) -> int:
        return self.layout.words_per_group

    @property
    def n_meta_words(self) -> int:
        return int(self.layout.meta_words(self.n_groups))

    @property
    def rom_rows(self) -> int:
        """Words of the tile = ROM reads per token (romsim.mapping.MatrixTiles.rom_rows)."""
        return int(self.layout.rom_rows(self.n_groups))

    @property
    def rom_depth(self) -> int:
        return self.depth or self.rom_rows

    # ---- lanes ---------------------------------------------------------------------------------
    @property
    def period_words(self) -> int:
        if self.packing == "base3":
            return 1
        return math.lcm(self.bits, self.word_bits) // self.word_bits

    @property
    def codes_per_period(self) -> int:
        if self.packing == "base3":
            return 5 * (self.word_bits // 8)
        return math.lcm(self.bits, self.word_bits) // self.bits

    def phase_codes(self, p: int) -> tuple[int, int]:
        """Codes ``[first, stop)`` (index within a period) completed by word ``p`` of a period."""
        b, w = self.bits, self.word_bits
        if self.packing == "base3":  # 5 trits per byte, a word holds whole bytes
            return 0, self.codes_per_period

        def first(q: int) -> int:  # smallest i with (i*b + b - 1) // w >= q
            return max(0, -(-(q * w - b + 1) // b))

        return first(p), (first(p + 1) if p + 1 < self.period_words else self.codes_per_period)

    @property
    def lanes(self) -> int:
        return max(b - a for a, b in (self.phase_codes(p) for p in range(self.period_words)))

    def code_lane_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(beat, lane) of every code of a group."""
        beat = np.empty(self.group_size, np.int64)
        lane = np.empty(self.group_size, np.int64)
        for wi in range(self.words_per_group):
            per, p = divmod(wi, self.period_words)
            a, b = self.phase_codes(p)
            idx = per * self.codes_per_period + np.arange(a, b)
            beat[idx] = wi
            lane[idx] = np.arange(b - a)
        return beat, lane

    # ---- arithmetic widths -------------------------------------------------------------------
    @property
    def d_bits(self) -> int:
        """Signed width of D = sum q_i*m_i over a group."""
        mx = self.group_size * ((1 << self.bits) - 1) * (1 << (self.act_bits - 1))
        return mx.bit_length() + 1

    @property
    def s_bits(self) -> int:
        return (self.group_size * (1 << (self.act_bits - 1))).bit_length() + 1

    @property
    def t_bits(self) -> int:
        """Signed width of T = D - z*S."""
        mx = self.group_size * (1 << (self.act_bits - 1)) * self.weight_max
        return mx.bit_length() + 1

    @property
    def out_bits(self) -> int:
        """Partial-sum output word: T in [0, acc_bits), fp16 scale bits above."""
        return self.acc_bits + SCALE_BITS

    @property
    def entry_bits(self) -> int:
        """Activation-buffer entry: one k-group's beats (words_per_group x lanes x act_bits)
        and the group's exponent (EXP_BITS, two's complement) above them."""
        return self.words_per_group * self.lanes * self.act_bits + EXP_BITS

    def label(self) -> str:
        kind = ""
        if self.kind != "affine":
            kind = f"{self.kind}{'b3' if self.packing == 'base3' else ''}_"
            kind += f"s{self.tensor_scale:04x}_" if self.kind == "ternary" else ""
        return (
            f"{kind}w{self.bits}g{self.group_size}_W{self.word_bits}_a{self.act_bits}"
            f"_acc{self.acc_bits}_n{self.n_groups}_r{self.ng_row}_k{self.kg0}_d{self.rom_depth}"
        )


# ------------------------------------------------------------------------------------------------
# activation buffer entries and output words


def act_group_entries(p: CellParams, a: np.ndarray, e: np.ndarray | None = None) -> list[int]:
    """Activation-buffer entries for mantissas ``a[Kp]`` (Kp = ng_row*group_size) and group
    exponents ``e[ng_row]`` (default 0): one wide int per k-group, beat w at bits
    ``[w*lanes*A, ...)``, lane j at ``[j*A, (j+1)*A)`` (two's complement), unused lanes zero, the
    exponent at ``[wpg*lanes*A, + EXP_BITS)``."""
    ents = _act_beats(p, a)
    ng = len(ents)
    e = np.zeros(ng, np.int64) if e is None else np.asarray(e, np.int64).reshape(ng)
    lo = p.words_per_group * p.lanes * p.act_bits
    mask = (1 << EXP_BITS) - 1
    return [v | ((int(x) & mask) << lo) for v, x in zip(ents, e.tolist(), strict=True)]


def _act_beats(p: CellParams, a: np.ndarray) -> list[int]:
    g, A, L, wpg = p.group_size, p.act_bits, p.lanes, p.words_per_group
    a = np.asarray(a).reshape(-1, g).astype(np.int64)
    beat, lane = p.code_lane_map()
    grid = np.zeros((a.shape[0], wpg, L), np.int64)
    grid[:, beat, lane] = a
    grid &= (1 << A) - 1
    out = []
    if A == 8:
        for row in grid:
            out.append(int.from_bytes(row.astype(np.uint8).tobytes(), "little"))
        return out
    for row in grid:
        v = 0
        for k, x in enumerate(row.reshape(-1).tolist()):
            v |= int(x) << (k * A)
        out.append(v)
    return out


def split_outputs(p: CellParams, packed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpack ``count`` captured output words (word i at bits ``[i*out_bits, ...)``) into
    (T int64, fp16 scale bits uint16)."""
    ob, ab = p.out_bits, p.acc_bits
    t = np.empty(count, np.int64)
    s = np.empty(count, np.uint16)
    for i in range(count):
        w = (packed >> (i * ob)) & ((1 << ob) - 1)
        v = w & ((1 << ab) - 1)
        t[i] = v - (1 << ab) if v >> (ab - 1) else v
        s[i] = w >> ab
    return t, s


def split_fp(packed: int, count: int) -> np.ndarray:
    """Unpack ``count`` captured fp32 words (word i at bits ``[32 i, 32 i + 32)``) as uint32."""
    return np.array([(packed >> (32 * i)) & 0xFFFFFFFF for i in range(count)], np.uint32)
