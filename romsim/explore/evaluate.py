"""The scalar cost model (:func:`romsim.estimate.estimate`) over numpy arrays of designs.

``evaluate_designs(base, model, params, prompt_len, gen_len)`` returns, for N designs, every
field of :func:`romsim.explore.fields.scalar_fields` as an array of length N, equal to the scalar
path design by design (relative difference <= 1e-9; booleans exactly). numpy runs across the
design axis: the only Python loops are over the unique categorical combinations (``rom.style``,
``quant``, ``tech.process_nm``), over chunks of designs, over the ops of one layer (about 15, as
in the scalar model) and, for the ROM fit, over the unique (cell count, word width) pairs.

How the scalar loops become closed forms:

- **Decode** (``PerfModel.decode_cycles`` summed over ``ctx = prompt_len + arange(gen_len)``):
  an op costs ``latency + max over stages of (c0 + c1 * ctx)``. In decode, the only ops whose
  loads depend on ctx are ``attn_score``, ``softmax`` and ``attn_value``, and each of their
  stages is ``k * (1 + ctx)`` (``PerfModel._attention(decode=True)``: ``pairs = kv_reads = T``
  per context token plus ``T``), so the max is ``(1 + ctx) * max(k)`` and the sum over the
  generated tokens is ``max(k) * (gen * (1 + prompt) + gen * (gen - 1) / 2)``: exact, without
  an N x gen_len array.
- **Prefill** (``PerfModel.prefill_ops``: chunks of ``c = prefill_chunk`` tokens): the
  ``P // c`` full chunks share every op but the three attention ops, whose two stage loads are
  linear in the chunk's ``ctx0 = k * c``; ``sum_k max(a0 + a1 k, b0 + b1 k)`` is summed exactly
  by splitting ``k`` at the lines' crossing (:func:`_sum_max2`). The remainder chunk
  (``P % c`` tokens at ``ctx0 = (P // c) * c``) is evaluated once; ``token_ops(1)`` once.
- **ROM fit** (``Mapping.max_rows_per_cell``): the difference-array count of the mapping, once
  per unique (cell count, word width, quant); ``rom_bytes`` (``Mapping.rom_bytes_used``) in
  closed form per design: ``sum over matrices of (C - e) rom_rows(b) + e rom_rows(b + 1)``.
- **Area, leakage, action energies** (``romsim.area.model.blocks``) with arrays; node data
  (:func:`romsim.tech.node`) is a scalar within a group of one ``tech.process_nm``.

Validity (``valid``): every numeric key is checked against the chip schema's bounds (the
``ge/gt/le/lt`` of its pydantic field in :mod:`romsim.config`, integrality of int fields,
finiteness, ``Literal`` choices), plus ``mesh.vector_rows < mesh.rows``, ``tech.process_nm`` in
the node table, ``rom.style`` in {brom, rom, logic}, ``quant`` parsed by
:func:`romsim.quant.named_quant`, ``prompt_len >= 1``, ``gen_len >= 1`` (an empty unit buffer,
``area.unit_buffer_bytes = 0``, is valid and has no area, as in the scalar model).
Invalid designs get NaN (floats) / False (booleans) and are never evaluated.

Training fields (``train_step_*``, ``scalar_fields(train=True)``): with ``train=True``, from the
same prefill closed form (romsim.perf.train.train_step_cost, batch 1, ``seq_len = prompt_len``).

Not vectorized: quant formats with a ``mix`` (``w3g128+w6x0.25``): their designs run through
the scalar path (:func:`romsim.explore.fields.scalar_fields`), one by one.
``operating.power_gating``, ``operating.clock_gating``, ``placement.*`` (but ``placement.embed_bits``) and
``lora.targets`` come from ``base`` only (not sweepable).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from romsim.area import tech as T
from romsim.area.model import _synth_calibration, datapath_activity, logic_rom_gates_per_one_bit
from romsim.config import ChipConfig
from romsim.errors import RomsimInputError
from romsim.explore.fields import FIELDS
from romsim.modelspec import LINEAR_KINDS, ModelSpec
from romsim.perf.memory import embed_rom_format
from romsim.perf.model import FUSED_INPUTS
from romsim.quant import QuantSpec, WeightFormat, named_quant, rom_tables
from romsim.rom.layout import RomLayout
from romsim.tech import Node, node, nodes_nm
from romsim.units import UM2_PER_MM2

_PJ = 1e-12
_FJ = 1e-15
CATEGORICAL = ("rom.style", "quant")
ROM_STYLES = ("brom", "rom", "logic")
CHUNK = 32768  # designs per numpy pass (temporaries stay in the L2/L3 cache)
TRAIN_FIELDS = ("train_step_energy_j", "train_step_time_s")
BOOL_FIELDS = ("fits_rom", "fits_sram")
PRUNE_KEYS = ("fits_rom", "area_mm2_max", "fits_sram", "max_context_tokens_min")
# fields the cheap pass gives every valid design (pruned ones included)
CHEAP_FIELDS = (
    "rom_bytes",
    "rom_capacity_bytes",
    "fits_rom",
    "area_mm2",
    "sram_bytes",
    "fits_sram",
    "max_context_tokens",
)

Arr = np.ndarray
Num = Any  # a Python scalar or a numpy array over the designs


@dataclass
class BatchResult:
    """What :func:`evaluate_batch` returns.

    ``fields``: field -> array of length N (the fields of ``scalar_fields``; floats NaN where a
    design is invalid, or pruned for the full-model fields; booleans False where invalid).
    ``valid``: the design passes the schema checks. ``evaluated``: the full model (decode,
    TTFT, energy, power) ran for it. ``pruned``: designs each bound removed, in the order
    ``fits_rom``, ``area_mm2_max``, ``fits_sram``, ``max_context_tokens_min`` (a design is
    counted under the first bound it fails), plus ``invalid``."""

    fields: dict[str, Arr]
    valid: Arr
    evaluated: Arr
    pruned: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- parameters
def _field_info(key: str) -> tuple[Any, list]:
    """(annotation, metadata) of a dotted ChipConfig key (``"mesh.rows"``)."""
    cls: type[BaseModel] = ChipConfig
    parts = key.split(".")
    for p in parts[:-1]:
        f = cls.model_fields.get(p)
        if f is None or not (
            isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
        ):
            raise RomsimInputError(key, None, "unknown config key")
        cls = f.annotation
    f = cls.model_fields.get(parts[-1])
    if f is None:
        raise RomsimInputError(key, None, "unknown config key")
    return f.annotation, list(f.metadata)


def _numeric_kind(annotation: Any) -> tuple[str, tuple | None]:
    """("int" | "float", Literal choices or None) of a numeric field annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
            return "int", choices
        raise TypeError("not numeric")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _numeric_kind(args[0])
        raise TypeError("not numeric")
    if annotation is bool:
        raise TypeError("not numeric")
    if annotation is int:
        return "int", None
    if annotation is float:
        return "float", None
    raise TypeError("not numeric")


def _check_numeric(key: str, a: Arr) -> tuple[Arr, Arr]:
    """(the values as int64/float64, ok mask) under the schema of ``key``."""
    ann, meta = _field_info(key)
    try:
        kind, choices = _numeric_kind(ann)
    except TypeError:
        raise RomsimInputError(key, None, "is not a numeric config field") from None
    x = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(x)
    xs = np.where(ok, x, 0.0)
    for m in meta:
        for attr, cmp in (("ge", np.greater_equal), ("gt", np.greater)):
            if getattr(m, attr, None) is not None:
                ok &= cmp(xs, getattr(m, attr))
        for attr, cmp in (("le", np.less_equal), ("lt", np.less)):
            if getattr(m, attr, None) is not None:
                ok &= cmp(xs, getattr(m, attr))
    if kind == "int":
        ok &= xs == np.floor(xs)
        if choices is not None:
            ok &= np.isin(xs, np.array(choices, dtype=np.float64))
        return np.where(ok, xs, 1).astype(np.int64), ok
    return xs, ok


def _base_value(base: ChipConfig, key: str) -> Any:
    obj: Any = base
    for p in key.split("."):
        obj = getattr(obj, p)
    return obj


class _V:
    """The chip's values for a set of designs: a numpy array for a swept key, else the base's
    scalar (so every formula broadcasts)."""

    def __init__(self, base: ChipConfig, arrays: dict[str, Arr], idx: Arr):
        self.base = base
        self.arrays = arrays
        self.idx = idx
        self._cache: dict[str, Any] = {}

    def __call__(self, key: str) -> Any:
        v = self._cache.get(key)
        if v is None and key not in self._cache:
            a = self.arrays.get(key)
            v = a[self.idx] if a is not None else _base_value(self.base, key)
            self._cache[key] = v
        return v

    def sub(self, mask: Arr) -> _V:
        return _V(self.base, self.arrays, self.idx[mask])

    @property
    def n(self) -> int:
        return len(self.idx)


def _tree_cycles(v: _V) -> Num:
    """FusedCellConfig.tree_cycles: the configured stages, or ceil(log2(cells_per_unit))."""
    swept = v.arrays.get("cell.adder_tree_cycles")
    if swept is not None:
        return swept[v.idx]
    if v.base.cell.adder_tree_cycles is not None:
        return v.base.cell.adder_tree_cycles
    cells = np.asarray(v("cell.cells_per_unit"), dtype=np.float64)
    return np.ceil(np.log2(np.maximum(cells, 1.0)))


def _ceil_div(a: Num, b: Num) -> Num:
    return -(-a // b)


# ---------------------------------------------------------------------------- group scalars
@dataclass(frozen=True)
class _Fmt:
    """A single-width format's layout counting (romsim.rom.layout.RomLayout) at any word width."""

    group_size: int
    group_bits: int  # RomLayout.group_bits
    meta_bits: int  # RomLayout.meta_bits (0 for ternary)

    @classmethod
    def of(cls, fmt: WeightFormat) -> _Fmt:
        lay = RomLayout.for_format(fmt, 64)
        return cls(lay.group_size, lay.group_bits, lay.meta_bits)

    def words(self, W: Num) -> tuple[Num, Num, Num]:
        """(words_per_group, metas_per_word, words_per_meta) at word width ``W``."""
        wpg = _ceil_div(self.group_bits, W)
        if self.meta_bits == 0:
            return wpg, 1, 0
        mpw = np.maximum(1, W // self.meta_bits)
        return wpg, mpw, _ceil_div(self.meta_bits, W)

    def rom_rows(self, n: Num, W: Num) -> Num:
        """RomLayout.rom_rows: ``n * words_per_group + ceil(n / metas_per_word) * words_per_meta``."""
        wpg, mpw, wpm = self.words(W)
        return n * wpg + _ceil_div(n, mpw) * wpm

    def dense_words(self, n: Num, W: Num) -> Num:
        """RomLayout.dense_words."""
        wpg, mpw, wpm = self.words(W)
        return n * (wpg + wpm / mpw)


@dataclass(frozen=True)
class _Mat:
    kind: str
    rows: int
    cols: int
    fmt: _Fmt

    @property
    def groups_per_row(self) -> int:
        return -(-self.cols // self.fmt.group_size)

    @property
    def n_groups(self) -> int:
        return self.rows * self.groups_per_row


@dataclass
class _Group:
    """Everything fixed within a group of designs: quant, ROM style, node."""

    quant: QuantSpec
    style: str
    node: Node
    layer: dict[str, _Mat]  # the decoder linears of one layer, by kind
    all_mats: list[_Mat]  # every matrix in mapping order (Mapping.matrices)
    lm_head: _Mat | None
    embed_fmt: list[tuple[_Fmt, float]] | None  # embed_read_per_token's ROM classes
    zero_fraction: float | None  # logic ROM default (bitstats), None when not needed
    cal_entry: dict | None  # synthesis calibration entry (romsim.area.model._calibration_entry)
    cal_mac_bits: float
    activity: float  # romsim.area.model.datapath_activity(quant.default.bits)
    w_bits: float  # quant.default.code_bits_per_weight
    default_bits: int
    default_group: int
    codebook: bool  # quant.default is NF4 (romsim.area.model: codebook decode per MAC lane)
    rows_cache: dict[tuple[int, int], int] = field(default_factory=dict)


def _make_group(base: ChipConfig, model: ModelSpec, q: QuantSpec, style: str, nm: int) -> _Group:
    """Mirrors Mapping.__init__ (matrix list and formats) for one quant spec."""
    lm_rom = base.placement.lm_head == "rom"
    emb_rom = base.placement.embed == "rom"
    tables = rom_tables(model, q, lm_rom, emb_rom)
    vocab = (model.vocab_size, model.hidden_size)
    layer = {k: _Mat(k, *model.linear_shape(k), _Fmt.of(q.for_kind(k))) for k in LINEAR_KINDS}
    mats = [_Mat(k, *vocab, _Fmt.of(f)) for k, f in tables if k == "embed"]
    mats += [layer[k] for _ in range(model.n_layers) for k in LINEAR_KINDS]
    lm = [_Mat(k, *vocab, _Fmt.of(f)) for k, f in tables if k == "lm_head"]
    mats += lm
    chip_q = base.model_copy(update={"quant": q})
    efmt = embed_rom_format(model, chip_q)
    embed = None if efmt is None else [(_Fmt.of(f), share) for f, share in efmt.classes()]
    zf = None
    if style == "logic" and base.rom.logic_zero_bit_fraction is None:
        from romsim.rom.bitstats import zero_bit_fraction

        zf = zero_bit_fraction(q.default)
    cal = _synth_calibration()
    entry, cal_bits = None, 1.0
    if cal is not None:
        key = "fused" if style == "brom" else "conventional"
        entry = cal["styles"].get(key, {}).get(str(q.default.bits))
        cal_bits = float(cal["config"]["mac_weight_bits_per_cycle"])
    d = q.default
    return _Group(
        quant=q,
        style=style,
        node=node(nm),
        layer=layer,
        all_mats=mats,
        lm_head=lm[0] if lm else None,
        embed_fmt=embed,
        zero_fraction=zf,
        cal_entry=entry,
        cal_mac_bits=cal_bits,
        activity=datapath_activity(d.bits),
        w_bits=d.code_bits_per_weight,
        default_bits=max(d.bits, d.mix.bits) if d.mix is not None else d.bits,
        default_group=d.group_size,
        codebook=d.kind == "nf4",
    )


def _max_rows_per_cell(g: _Group, C: int, W: int) -> int:
    """Mapping.rows_per_cell().max() for ``C`` cells of ``W``-bit words (difference array over
    the cells, vectorized over the matrices, as the mapping does)."""
    key = (C, W)
    hit = g.rows_cache.get(key)
    if hit is not None:
        return hit
    ng = np.array([m.n_groups for m in g.all_mats], dtype=np.int64)
    base, extra = ng // C, ng % C
    rot = (np.cumsum(extra) - extra) % C
    fmts = {}
    lo = np.empty_like(ng)
    hi = np.empty_like(ng)
    for i, m in enumerate(g.all_mats):
        f = fmts.setdefault(m.fmt, m.fmt)
        lo[i] = f.rom_rows(int(base[i]), W)
        hi[i] = f.rom_rows(int(base[i]) + 1, W)
    d = np.where(extra > 0, hi - lo, 0)
    end = rot + extra
    wrap = end > C
    diff = np.zeros(C + 1, dtype=np.int64)
    np.add.at(diff, rot, d)
    np.add.at(diff, np.where(wrap, C, end), -d)
    np.add.at(diff, np.zeros_like(rot), np.where(wrap, d, 0))
    np.add.at(diff, np.where(wrap, end - C, 0), np.where(wrap, -d, 0))
    out = int(lo.sum()) + int(np.cumsum(diff[:C]).max())
    g.rows_cache[key] = out
    return out


# ---------------------------------------------------------------------------- derived chip values
@dataclass
class _D:
    """PerfModel._derived and the ChipConfig properties the model reads, as arrays."""

    U: Num
    VU: Num
    cols: Num
    hops: Num
    act_bytes: Num
    kv_bytes: Num
    lora_bytes: Num
    n_cells: Num
    W: Num
    srbw: Num  # sram_read_bytes_per_cycle_per_unit
    swbw: Num  # sram_write_bytes_per_cycle_per_unit
    clock: Num


def _derived(v: _V, g: _Group) -> _D:
    rows, cols, vr = v("mesh.rows"), v("mesh.cols"), v("mesh.vector_rows")
    U = (rows - vr) * cols
    VU = vr * cols
    W = v("rom.word_bits")
    n_cells = U * v("cell.cells_per_unit")
    rb = v("sram.read_bytes_per_cycle_per_unit")
    if rb is None:  # ChipConfig.sram_macros_per_unit * word_bits // 8
        macro_bytes = v("area.h_sram_macro_rows") * W / 8
        per_unit = v("sram.lora_kv_bytes") / np.maximum(U, 1)
        macros = np.maximum(1, np.ceil(per_unit / macro_bytes).astype(np.int64))
        rb = macros * W // 8
    wb = v("sram.write_bytes_per_cycle_per_unit")
    if wb is None:
        wb = rb
    return _D(
        U=U,
        VU=np.maximum(1, VU),
        cols=cols,
        hops=np.maximum(1, (rows - vr + 1) // 2),
        act_bytes=v("cell.act_bits") / 8 + 1 / g.default_group,
        kv_bytes=(v("sram.kv_bits") + v("sram.kv_exp_bits") / v("sram.kv_group")) / 8,
        lora_bytes=v("lora.weight_bits") / 8,
        n_cells=n_cells,
        W=W,
        srbw=rb,
        swbw=wb,
        clock=v("tech.clock_hz"),
    )


# ---------------------------------------------------------------------------- ops
@dataclass
class _Op:
    """One op: latency and stage loads (arrays). ``prop``: decode attention op whose loads are
    ``stage * (1 + ctx)``; ``lines``: prefill attention op whose two loads are ``a + b * ctx0``."""

    lat: Num
    stages: dict[str, Num]
    events: dict[str, Num] = field(default_factory=dict)
    prop: bool = False
    group: str = ""  # PerfModel op group / name (the training model's backward factors)
    ev_slope: dict[str, Num] = field(default_factory=dict)  # prefill attention: per ctx0
    lines: tuple[tuple[Num, Num], tuple[Num, Num]] | None = None

    def cycles(self) -> Num:
        return self.lat + _maxn(list(self.stages.values()))


def _maxn(xs: list[Num]) -> Num:
    if not xs:
        return 0.0
    out = xs[0]
    for x in xs[1:]:
        out = np.maximum(out, x)
    return out


def _add(d: dict[str, Num], k: str, x: Num) -> None:
    d[k] = d[k] + x if k in d else x


def _matmul(v: _V, d: _D, tiles: list[_Mat], Tk: Num, lora: bool) -> _Op:
    """PerfModel._matmul (+ PerfModel._lora merged as in layer_ops when ``lora``)."""
    K = tiles[0].cols
    hop_lat = v("interconnect.hop_latency_cycles")
    lat = (
        2 * d.hops * hop_lat
        + v("cell.pipeline_depth_cycles")
        + _tree_cycles(v)
        + v("interconnect.sync_cycles_per_op")
    )
    link = v("interconnect.link_bytes_per_cycle")
    st: dict[str, Num] = {}
    ev: dict[str, Num] = {}
    kb = Tk * K * d.act_bytes
    st["bcast"] = kb / link
    ev["link_bytes"] = kb * d.cols * d.hops
    ev["unit_bus_bytes"] = kb * d.U
    rom_rows = 0
    code_bits = 0
    n0s = []
    for m in tiles:
        n0 = _ceil_div(m.n_groups, d.n_cells)  # max_groups_per_cell
        n0s.append(n0)
        rom_rows = rom_rows + m.fmt.rom_rows(n0, d.W)
        code_bits = code_bits + n0 * m.fmt.group_bits
    mac_cyc = code_bits / v("cell.mac_weight_bits_per_cycle")
    first = tiles[0]
    n0, gpr = n0s[0], first.groups_per_row
    wait = np.where(n0 < gpr, (K * d.act_bytes / link) * np.maximum(0, gpr - n0 + 1) / gpr, 0.0)
    reads = _ceil_div(Tk, v("cell.weight_reuse_tokens"))
    st["rom"] = reads * rom_rows / v("rom.reads_per_cycle") + wait
    st["mac"] = Tk * mac_cyc
    partials = sum(m.rows for m in tiles) + len(tiles) * d.U
    acc = v("cell.acc_bits")
    st["reduce"] = Tk * partials * acc / 8 / (d.cols * link)
    ev["link_bytes"] = ev["link_bytes"] + Tk * partials * acc / 8 * d.hops
    total_words = 0.0
    for m in tiles:
        total_words = total_words + m.fmt.dense_words(m.n_groups, d.W)
    ev["rom_bits"] = reads * total_words * d.W
    ev["l_macs"] = Tk * sum(m.rows * m.cols for m in tiles)
    if lora:
        r = v("lora.rank")
        lt = [m for m in tiles if m.kind in v.base.lora.targets]
        if lt:
            Kl = lt[0].cols
            macs = r * sum(Kl + m.rows for m in lt)
            weight_bytes = macs * d.lora_bytes
            _add(st, "h_mac", Tk * macs / (d.U * v("h_unit.macs_per_unit_per_cycle")))
            blocks = _ceil_div(Tk, v("h_unit.token_block"))
            _add(st, "sram", blocks * weight_bytes / (d.U * d.srbw))
            _add(ev, "h_macs", Tk * macs)
            _add(ev, "sram_read_bytes", blocks * weight_bytes)
            lat = np.where(r > 0, np.maximum(lat, v("h_unit.op_latency_cycles")), lat)
    return _Op(lat, st, ev)


def _vector(v: _V, d: _D, elems: Num, ope: float, sfu: float) -> _Op:
    """PerfModel._vector."""
    st = {"vec": elems * ope / (d.VU * v("vector.lanes_per_unit"))}
    if sfu:
        st["sfu"] = elems * sfu / (d.VU * v("vector.sfu_lanes_per_unit"))
    return _Op(v("vector.op_latency_cycles"), st, {"vec_ops": elems * (ope + sfu)})


def _attention(v: _V, d: _D, model: ModelSpec, Tk: Num, decode: bool, ctx0: Num = 0) -> list[_Op]:
    """PerfModel._attention. Decode: stage coefficients of ``(1 + ctx)`` (prop ops). Prefill:
    the two stage loads as lines ``a + b * ctx0`` (``lines``), and their value at ``ctx0``."""
    m = model
    hlat = v("h_unit.op_latency_cycles")
    hu = d.U * v("h_unit.macs_per_unit_per_cycle")
    sram_bw = d.U * d.srbw
    sfu = d.U * v("h_unit.sfu_lanes_per_unit")
    macs = m.n_heads * m.head_dim
    kvb = m.kv_dim * d.kv_bytes
    lat_attn = hlat + d.hops * v("interconnect.hop_latency_cycles")
    if decode:
        hm = Tk * macs / hu
        sr = Tk * kvb / sram_bw
        ev_h = Tk * macs
        ev_s = Tk * kvb
        el = Tk * m.n_heads
        score = _Op(lat_attn, {"h_mac": hm, "sram": sr},
                    {"h_macs": ev_h, "sram_read_bytes": ev_s}, prop=True)  # fmt: skip
        sm = _Op(hlat, {"h_mac": 4 * el / hu, "sfu": el / sfu}, {"h_ops": 5 * el}, prop=True)
        value = _Op(lat_attn, {"h_mac": hm, "sram": sr},
                    {"h_macs": ev_h, "sram_read_bytes": ev_s}, prop=True)  # fmt: skip
        return [score, sm, value]
    # prefill: pairs = T * ctx0 + T (T + 1) / 2, kv_reads = blocks * (ctx0 + T)
    blocks = _ceil_div(Tk, v("h_unit.token_block"))
    p_a, p_b = Tk * (Tk + 1) / 2, Tk
    k_a, k_b = blocks * Tk, blocks
    pairs = p_a + p_b * ctx0
    kvr = k_a + k_b * ctx0
    hm_l = (p_a * macs / hu, p_b * macs / hu)
    sr_l = (k_a * kvb / sram_bw, k_b * kvb / sram_bw)
    ev = {"h_macs": pairs * macs, "sram_read_bytes": kvr * kvb}
    ev_b = {"h_macs": p_b * macs, "sram_read_bytes": k_b * kvb}
    score = _Op(lat_attn, {"h_mac": pairs * macs / hu, "sram": kvr * kvb / sram_bw}, ev,
                lines=(hm_l, sr_l), group="attn_score", ev_slope=ev_b)  # fmt: skip
    nh = m.n_heads
    sm = _Op(
        hlat,
        {"h_mac": 4 * pairs * nh / hu, "sfu": pairs * nh / sfu},
        {"h_ops": 5 * pairs * nh},
        lines=((4 * p_a * nh / hu, 4 * p_b * nh / hu), (p_a * nh / sfu, p_b * nh / sfu)),
        group="softmax",
        ev_slope={"h_ops": 5 * p_b * nh},
    )
    value = _Op(lat_attn, dict(score.stages), dict(ev), lines=(hm_l, sr_l), group="attn_value",
                ev_slope=dict(ev_b))  # fmt: skip
    return [score, sm, value]


def _tag(op: _Op, group: str) -> _Op:
    op.group = group
    return op


def _layer_ops(
    v: _V, d: _D, g: _Group, model: ModelSpec, Tk: Num, decode: bool, ctx0: Num = 0
) -> list[_Op]:
    """PerfModel.layer_ops."""
    m = model
    H, Iff = m.hidden_size, m.intermediate_size
    ops = [_tag(_vector(v, d, Tk * H, 3, 1 / H), "norm")]
    for group, kinds in FUSED_INPUTS:
        tiles = [g.layer[k] for k in kinds]
        ops.append(_tag(_matmul(v, d, tiles, Tk, lora=True), group))
        if group == "qkv":
            ops.append(_tag(_vector(v, d, Tk * (m.q_dim + m.kv_dim), 4, 0), "rope"))
            b = Tk * 2 * m.kv_dim * d.kv_bytes
            link = v("interconnect.link_bytes_per_cycle")
            ops.append(
                _Op(
                    d.hops * v("interconnect.hop_latency_cycles"),
                    {"link": b / (d.cols * link), "sram": b / (d.U * d.swbw)},
                    {"sram_write_bytes": b},
                    group="kv_write",
                )
            )
            ops.extend(_attention(v, d, m, Tk, decode, ctx0))
        elif group == "o":
            ops.append(_tag(_vector(v, d, Tk * H, 1, 0), "norm"))
            ops.append(_tag(_vector(v, d, Tk * H, 3, 1 / H), "norm"))
        elif group == "gate_up":
            ops.append(_tag(_vector(v, d, Tk * Iff, 3, 1), "silu"))
        elif group == "down":
            ops.append(_tag(_vector(v, d, Tk * H, 1, 0), "norm"))
    return ops


def _offchip(v: _V, d: _D, nbytes: Num) -> _Op:
    """PerfModel._offchip."""
    bw = v("offchip.bandwidth_bytes_per_s")
    return _Op(
        v("interconnect.hop_latency_cycles") * d.hops,
        {"offchip": nbytes * d.clock / bw},
        {"offchip_bytes": nbytes},
    )


def _token_ops(v: _V, d: _D, g: _Group, model: ModelSpec, Tk: Num) -> list[_Op]:
    """PerfModel.token_ops (with PerfModel._embed and memory.embed_read_per_token)."""
    m = model
    ops = [_tag(_vector(v, d, Tk * m.hidden_size, 3, 1 / m.hidden_size), "final_norm")]
    if g.lm_head is not None:  # (tagged by op name: the training model skips these)
        ops.append(_tag(_matmul(v, d, [g.lm_head], Tk, lora=False), "lm_head"))
        ops.append(_tag(_vector(v, d, Tk * m.vocab_size, 2, 0), "sampling"))
    else:
        ops.append(_offchip(v, d, Tk * (2 * m.hidden_size + 4)))
    place = v.base.placement.embed
    row_bytes = m.hidden_size * v("placement.embed_bits") / 8
    lat = v("interconnect.hop_latency_cycles") * d.hops
    if place == "off_chip":
        ops.append(_offchip(v, d, Tk * row_bytes))
    elif place == "rom":
        assert g.embed_fmt is not None
        words = 0.0
        for f, share in g.embed_fmt:
            gpr = -(-m.hidden_size // f.group_size)
            words = words + f.dense_words(gpr * share, d.W)
        ops.append(
            _Op(
                lat,
                {"rom": Tk * words / v("rom.reads_per_cycle")},
                {"rom_bits": Tk * (words * d.W)},
            )
        )
    else:
        ops.append(_Op(lat, {"sram": Tk * row_bytes / d.srbw}, {"sram_read_bytes": Tk * row_bytes}))
    return ops


def _sum_max2(a0: Num, a1: Num, b0: Num, b1: Num, n: Num) -> Num:
    """``sum_{k=0}^{n-1} max(a0 + a1 k, b0 + b1 k)`` exactly: the k where line a is on top form
    one contiguous range (the lines cross at most once), summed as arithmetic series."""
    n = np.asarray(n, dtype=np.float64)
    da, ds = a0 - b0, a1 - b1  # a - b = da + ds k
    with np.errstate(divide="ignore", invalid="ignore"):
        kc = -da / ds  # crossing
    # a >= b on [lo, hi) within [0, n)
    up = ds > 0  # a on top for k >= kc
    lo = np.where(up, np.clip(np.ceil(kc), 0, n), 0.0)
    hi = np.where(up, n, np.where(ds < 0, np.clip(np.floor(kc) + 1, 0, n), 0.0))
    flat = ds == 0
    lo = np.where(flat, 0.0, lo)
    hi = np.where(flat, np.where(da >= 0, n, 0.0), hi)
    hi = np.maximum(hi, lo)

    def series(c0: Num, c1: Num, s: Num, e: Num) -> Num:  # sum_{k=s}^{e-1} c0 + c1 k
        return (e - s) * c0 + c1 * ((e * (e - 1) - s * (s - 1)) / 2)

    return series(a0, a1, lo, hi) + series(b0, b1, 0.0, lo) + series(b0, b1, hi, n)


# ---------------------------------------------------------------------------- area
def _array_eff(bits: Num, e1: float, e8: float) -> Num:
    """romsim.area.tech.array_efficiency."""
    rows64 = bits / T.COMPILER_WORD_BITS
    slope = (e8 - e1) / 3.0
    eff = e1 + slope * np.log2(np.maximum(rows64, 128) / 1024)
    return np.minimum(np.maximum(eff, 0.05), 0.90)


def _macro_eff(bits: Num, e1: float, e8: float, cell: float, cell7: float, ls: float) -> Num:
    """romsim.area.tech.macro_efficiency."""
    e7 = _array_eff(bits, e1, e8)
    periph_7 = bits * cell7 * (1 / e7 - 1)
    cells = bits * cell
    return cells / (cells + periph_7 * ls)


@dataclass
class _Area:
    total: Num  # area_mm2 (sum of on-die blocks)
    leak: dict[str, Num]  # block -> leakage (count x each)
    gated: dict[str, str]  # block -> perf resource (power gating)
    actions: dict[str, Num]  # action -> J


def _area(v: _V, d: _D, g: _Group, actions: bool) -> _Area:
    """romsim.area.model.blocks (areas, leakages; action energies when ``actions``)."""
    n = g.node
    leak = n.leakage_scale
    U, VU_raw = d.U, v("mesh.vector_rows") * d.cols
    style = g.style
    W = d.W
    c7 = node(T.COMPILER_NODE_NM)
    ls = n.nand2_um2 / c7.nand2_um2

    def logic_mm2(gates: Num) -> Num:
        return gates * n.nand2_um2 / T.LOGIC_UTILISATION / UM2_PER_MM2

    def sram_mm2(bits: Num, macro_bits: Num) -> Num:
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty SRAM: 0 / 0
            eff = _macro_eff(
                macro_bits,
                T.SRAM_EFF_1K,
                T.SRAM_EFF_8K,
                n.sram_bitcell_um2,
                c7.sram_bitcell_um2,
                ls,
            )
            area = bits * n.sram_bitcell_um2 / eff / UM2_PER_MM2
        return np.where(np.asarray(bits) > 0, area, 0.0)  # romsim.area.model._sram_mm2

    # cell_compute_gates / cell_compute_flops
    reuse = v("cell.weight_reuse_tokens")
    mwb = v("cell.mac_weight_bits_per_cycle")
    regs_bits = (reuse - 1) * W
    if g.cal_entry is not None:
        scale = mwb / g.cal_mac_bits
        gates = float(g.cal_entry["nand2_eq"]) * scale + regs_bits * T.GATES_PER_FLOP
        if "flops" in g.cal_entry:
            flops = float(g.cal_entry["flops"]) * scale + regs_bits
        else:
            flops = gates / 30 + regs_bits
    else:
        macs = np.maximum(1, mwb // g.default_bits)
        gates = (
            macs * T.GATES_INT_MAC_4x8 * (v("cell.act_bits") / 8)
            + T.GATES_DEQUANT
            + regs_bits * T.GATES_PER_FLOP
        )
        flops = gates / 30 + regs_bits
    if g.codebook:  # added before the flops in the scalar model's fallback (gates / 30)
        cb = np.maximum(1, mwb // g.default_bits) * T.GATES_CODEBOOK16_DECODE
        gates = gates + cb
        if g.cal_entry is None or "flops" not in g.cal_entry:
            flops = flops + cb / 30
    # cell_area_mm2 / rom_array_mm2
    bits_cell = v("rom.macro_rows") * W
    if style == "logic":
        zf = v("rom.logic_zero_bit_fraction")
        if zf is None:
            zf = g.zero_fraction
        rom = logic_mm2(bits_cell * (1 - zf) * logic_rom_gates_per_one_bit())
    else:
        eff = _macro_eff(
            v("rom.bank_rows") * W,
            T.ROM_EFF_1K,
            T.ROM_EFF_8K,
            n.rom_bitcell_um2,
            c7.rom_bitcell_um2,
            ls,
        )
        factor = T.BROM_AREA_FACTOR if style == "brom" else 1.0
        rom = bits_cell * n.rom_bitcell_um2 * factor / eff / UM2_PER_MM2
    comp = logic_mm2(gates)
    cell = np.maximum(rom, comp) if style == "brom" else rom + comp
    tj = v("operating.junction_temp_c")
    logic_w_mm2 = T.logic_leak_w_per_mm2(tj, n.nm)
    rom_leak = T.rom_leak_w_per_mm2(tj, n.nm) if style != "logic" else logic_w_mm2
    cell_leak = rom * rom_leak + comp * logic_w_mm2

    buf_bits = v("area.unit_buffer_bytes") * 8
    unit_periph = logic_mm2((v("cell.cells_per_unit") - 1) * T.GATES_ADDER32) + sram_mm2(
        buf_bits, buf_bits
    )
    lkv = v("sram.lora_kv_bytes")
    h_macro_bits = v("area.h_sram_macro_rows") * W
    h_sram = sram_mm2(lkv * 8, h_macro_bits)
    h_logic = logic_mm2(
        v("h_unit.macs_per_unit_per_cycle") * T.GATES_FP16_MAC
        + v("h_unit.sfu_lanes_per_unit") * T.GATES_SFU
    )
    VU1 = np.maximum(VU_raw, 1)
    act = v("sram.act_bytes")
    v_sram = sram_mm2(act * 8, v("area.act_sram_macro_rows") * W) / VU1
    v_logic = logic_mm2(
        v("vector.lanes_per_unit") * T.GATES_FP16_MAC + v("vector.sfu_lanes_per_unit") * T.GATES_SFU
    )
    router = logic_mm2(
        5 * (v("interconnect.link_bytes_per_cycle") * 8) * T.GATES_ROUTER_PER_PORT_BIT
    )
    logic_leak = logic_w_mm2 * leak

    def sram_leak(bits: Num, area_mm2: Num) -> Num:
        return T.sram_macro_leak_w(bits, area_mm2, tj, n)

    areas = {
        "fused_cells": d.n_cells * cell,
        "unit_periphery": U * unit_periph,
        "lora_kv_sram": h_sram,
        "h_compute": U * h_logic,
        "vector_units": VU1 * (v_sram + v_logic),
        "routers": (U + VU_raw) * router,
    }
    leaks = {
        "fused_cells": d.n_cells * (cell_leak * leak),
        "unit_periphery": U * (unit_periph * logic_leak),
        "lora_kv_sram": sram_leak(lkv * 8, h_sram),
        "h_compute": U * (h_logic * logic_leak),
        "vector_units": VU1 * (sram_leak(act * 8 / VU1, v_sram) + v_logic * logic_leak),
        "routers": (U + VU_raw) * (router * logic_leak),
    }
    core = sum(areas.values())
    f = v("area.control_io_fraction")
    ctrl = core * f / (1 - f)
    areas["control_io"] = ctrl
    leaks["control_io"] = ctrl * logic_leak
    gated = {"fused_cells": "rom", "unit_periphery": "rom", "h_compute": "h_mac"}
    if v.base.operating.power_gating:
        for b in gated:
            areas[b] = areas[b] * (1 + T.POWER_GATE_AREA_OVERHEAD)
    total = sum(areas.values())
    out = _Area(total, leaks, gated, {})
    if not actions:
        return out
    gate_fj = n.gate_op_fj()
    w = n.wire_pj_per_bit_mm
    hop = np.sqrt(total) / np.maximum(v("mesh.rows"), d.cols)
    if style == "logic":
        rom_j = np.log2(np.maximum(v("rom.macro_rows"), 2)) * gate_fj * _FJ
    else:
        bank_bytes = v("rom.bank_rows") * W / 8
        factor = T.BROM_READ_FACTOR if style == "brom" else 1.0
        rom_j = n.sram_read_pj_per_bit(bank_bytes) * (
            math.sqrt(1 / 3) * factor * _PJ
        )  # Node.rom_read_pj_per_bit
    # romsim.area.model.cell_cycle_j and the clock (blocks' flops_each, clock_cycles)
    gating = v.base.operating.clock_gating
    clk_j = n.flop_clock_fj * _FJ if gating else 0.0
    cycle_j = gates * g.activity * gate_fj * _FJ + flops * clk_j
    cpu = v("cell.cells_per_unit")
    periph_flops = (cpu - 1) * v("cell.acc_bits")
    h_flops = (
        v("h_unit.macs_per_unit_per_cycle") * T.FLOPS_PER_FP16_LANE
        + v("h_unit.sfu_lanes_per_unit") * T.FLOPS_PER_SFU_LANE
    )
    v_flops = (
        v("vector.lanes_per_unit") * T.FLOPS_PER_FP16_LANE
        + v("vector.sfu_lanes_per_unit") * T.FLOPS_PER_SFU_LANE
    )
    r_flops = 5 * v("interconnect.link_bytes_per_cycle") * 8 * T.FLOPS_PER_ROUTER_PORT_BIT
    all_flops = (
        d.n_cells * flops + U * periph_flops + U * h_flops + VU1 * v_flops
        + (U + VU_raw) * r_flops
    )  # fmt: skip
    if gating:
        cycle_clock_j = all_flops / T.ICG_FLOPS * n.icg_clock_fj * _FJ
    else:
        cycle_clock_j = all_flops * n.flop_clock_fj * _FJ
    macs_per_cycle = np.maximum(1.0, mwb / g.w_bits)
    sram_j = 8 * n.sram_read_pj_per_bit(h_macro_bits / 8) * _PJ  # array-valued
    fp = n.fp_mac_pj(16) * _PJ + T.FLOPS_PER_FP16_LANE * clk_j
    out.actions = {
        "rom_bits": rom_j,
        "l_macs": (cycle_j + periph_flops / cpu * clk_j) / macs_per_cycle,
        "sram_read_bytes": sram_j,
        "sram_write_bytes": sram_j,
        "h_macs": fp,
        "h_ops": fp,
        "vec_ops": fp,
        "link_bytes": 8 * (
            0.5 * w * hop * _PJ + T.GATES_ROUTER_PER_PORT_BIT * gate_fj * _FJ
            + T.FLOPS_PER_ROUTER_PORT_BIT * clk_j
        ),
        "unit_bus_bytes": 8 * 0.5 * w * hop * _PJ,
        "offchip_bytes": 8 * v("offchip.energy_pj_per_bit") * _PJ,
        "clock_cycles": cycle_clock_j,
    }  # fmt: skip
    return out


# ---------------------------------------------------------------------------- the passes
def _cheap(
    v: _V, d: _D, g: _Group, model: ModelSpec, P: Arr, G: Arr
) -> tuple[dict[str, Arr], _Area]:
    """ROM fit and bytes (Mapping), area (blocks), SRAM fit and max context (estimate.check_fit,
    perf.memory): everything but the timing."""
    out: dict[str, Arr] = {}
    nd = v.n
    C = np.broadcast_to(d.n_cells, (nd,))
    Wb = np.broadcast_to(d.W, (nd,))
    pairs = np.stack([C, Wb], axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    need = np.array([_max_rows_per_cell(g, int(c), int(w)) for c, w in uniq], dtype=np.int64)
    need_rows = need[inv.reshape(-1)]
    out["fits_rom"] = ~(need_rows > v("rom.macro_rows"))
    # Mapping.rom_bytes_used: sum over cells of rows_per_cell, in closed form per matrix
    rows = 0
    mats = [(m, model.n_layers) for m in g.layer.values()]
    mats += [(m, 1) for m in g.all_mats if m.kind in ("embed", "lm_head")]
    for m, mult in mats:
        b, e = m.n_groups // C, m.n_groups % C
        rows = rows + mult * ((C - e) * m.fmt.rom_rows(b, Wb) + e * m.fmt.rom_rows(b + 1, Wb))
    out["rom_bytes"] = (rows * Wb // 8).astype(np.float64)
    bits_cell = v("rom.macro_rows") * Wb
    out["rom_capacity_bytes"] = np.floor(C.astype(np.float64) * bits_cell / 8)
    area = _area(v, d, g, actions=False)
    out["area_mm2"] = np.broadcast_to(np.asarray(area.total, dtype=np.float64), (nd,)).copy()
    # SRAM: perf.memory.lora_bytes / kv_bytes_per_token / embed_sram_bytes, check_fit
    per_layer = sum(sum(model.linear_shape(k)) for k in v.base.lora.targets if k in LINEAR_KINDS)
    lb = v("lora.rank") * per_layer * model.n_layers * v("lora.weight_bits") // 8
    kvpt = (
        model.kv_elems_per_token()
        * (v("sram.kv_bits") + v("sram.kv_exp_bits") / v("sram.kv_group"))
        / 8
    )
    emb = (
        model.vocab_size * model.hidden_size * v("placement.embed_bits") // 8
        if v.base.placement.embed == "sram"
        else 0
    )
    B = v("operating.batch")
    total_ctx = P + G
    cap = v("sram.lora_kv_bytes")
    kv = B * total_ctx * kvpt
    out["fits_sram"] = ~(lb + kv + emb > cap)
    kvb = np.floor(B * total_ctx * kvpt)
    out["sram_bytes"] = np.floor(lb + kvb + emb) * np.ones(nd)
    free = cap - lb - emb
    per_token = kvpt * B
    out["max_context_tokens"] = np.maximum(0.0, np.floor_divide(free, per_token)) * np.ones(nd)
    for k in ("fits_rom", "fits_sram"):
        out[k] = np.broadcast_to(out[k], (nd,)).copy()
    return out, area


def _bwd_cycles(of: _Op, ol: _Op, tot: Num, nff: Num, has_rem: Arr, nl: int) -> Num:
    """Backward cycles of one prefill op over all chunks (romsim.perf.train.train_step_cost:
    vector groups and _BWD_FACTOR groups 2x; a matmul with a LoRA path pays
    ``max(ROM path, 2 x LoRA path)``; others 1x)."""
    from romsim.perf.train import _BWD_DEFAULT, _BWD_FACTOR, _BWD_VECTOR, _VECTOR_GROUPS

    if of.group in _VECTOR_GROUPS:
        return _BWD_VECTOR * tot
    if of.group in _BWD_FACTOR or "h_mac" not in of.stages:
        return _BWD_FACTOR.get(of.group, _BWD_DEFAULT) * tot

    def cyc(op: _Op) -> Num:
        rest = _maxn([x for r, x in op.stages.items() if r != "h_mac"])
        return op.lat + np.maximum(rest, 2 * op.stages["h_mac"])

    return nl * (nff * cyc(of) + np.where(has_rem, cyc(ol), 0.0))


def _full(
    v: _V, d: _D, g: _Group, model: ModelSpec, P: Arr, G: Arr, train: bool = False
) -> dict[str, Arr]:
    """estimate(): decode rate, TTFT, energy per token, power; with ``train`` the training
    step of ``scalar_fields(train=True)`` (train_step_cost(PerfModel, 1, prompt_len))."""
    nl = model.n_layers
    B = v("operating.batch")
    f = d.clock
    # ---- decode (PerfModel.decode_table at T = batch, token_table at T = batch)
    dec = _layer_ops(v, d, g, model, B, decode=True)
    tok = _token_ops(v, d, g, model, B)
    const = 0.0
    lat_prop = 0.0
    k_prop = 0.0
    for op in dec:
        if op.prop:
            lat_prop = lat_prop + op.lat
            k_prop = k_prop + _maxn(list(op.stages.values()))
        else:
            const = const + op.cycles()
    tok_c = 0.0
    for op in tok:
        tok_c = tok_c + op.cycles()
    Gf = G.astype(np.float64)
    s1 = Gf * (1 + P) + Gf * (Gf - 1) / 2  # sum over ctx of (1 + ctx)
    dec_sum = nl * ((const + lat_prop) * Gf + k_prop * s1) + tok_c * Gf
    decode_s = dec_sum / f
    out: dict[str, Arr] = {}
    out["decode_tokens_per_s"] = G / decode_s
    out["decode_tokens_per_s_total"] = B * G / decode_s
    # ---- prefill (PerfModel.prefill_cycles)
    m = model
    per_tok = (m.q_dim + 2 * m.kv_dim + 2 * m.intermediate_size + 2 * m.hidden_size) * 2
    chunk = np.maximum(1, np.minimum(P, v("sram.act_bytes") // per_tok))
    nf, rem = P // chunk, P % chunk
    full = _layer_ops(v, d, g, model, chunk, decode=False, ctx0=0)
    has_rem = rem > 0
    last = _layer_ops(v, d, g, model, np.maximum(rem, 1), decode=False, ctx0=nf * chunk)
    tok1 = _token_ops(v, d, g, model, 1)
    nff = nf.astype(np.float64)
    pre = 0.0
    fwd = bwd = 0.0  # romsim.perf.train.train_step_cost's forward / backward cycles
    pev: dict[str, Num] = {}  # PerfModel.prefill_events
    for of, ol in zip(full, last, strict=True):
        if of.lines is None:
            tot = nff * of.cycles()
        else:
            (a0, a1), (b0, b1) = of.lines
            tot = nff * of.lat + _sum_max2(a0, a1 * chunk, b0, b1 * chunk, nff)
        tot = nl * (tot + np.where(has_rem, ol.cycles(), 0.0))
        pre = pre + tot
        if train:
            fwd = fwd + tot
            bwd = bwd + _bwd_cycles(of, ol, tot, nff, has_rem, nl)
            for k, c in of.events.items():
                s1 = nff * c
                if k in of.ev_slope:  # sum over chunks of c + slope * k * chunk
                    s1 = s1 + of.ev_slope[k] * chunk * (nff * (nff - 1) / 2)
                _add(pev, k, nl * (s1 + np.where(has_rem, ol.events[k], 0.0)))
    for op in tok1:
        pre = pre + op.cycles()
        if train:
            for k, c in op.events.items():
                _add(pev, k, c)
            if op.group not in ("final_norm", "lm_head", "sampling"):
                fwd = fwd + op.cycles()
                bwd = bwd + op.cycles()
    out["ttft_s"] = pre / f
    # ---- energy (estimate: decode events at the mid context, leakage over a step)
    mid = P + G / 2
    area = _area(v, d, g, actions=True)
    ev: dict[str, Num] = {}
    busy = {"rom": 0.0, "h_mac": 0.0}
    for ops, mult in ((dec, nl), (tok, 1)):
        for op in ops:
            x = (1 + mid) if op.prop else 1.0
            for k, c in op.events.items():
                _add(ev, k, mult * (c * x))
            for r in busy:
                if r in op.stages:
                    busy[r] = busy[r] + mult * (op.stages[r] * x)
    total_mid = nl * (const + lat_prop + k_prop * (1 + mid)) + tok_c  # decode_cycles(mid)
    ev["clock_cycles"] = total_mid  # PerfModel.decode_events
    dyn = 0.0
    for k, c in ev.items():
        dyn = dyn + c * area.actions[k] / B
    leak = 0.0
    if v.base.operating.power_gating:  # leakage_w with PerfModel.utilisation(mid)
        for b, lw in area.leak.items():
            r = area.gated.get(b)
            if r is None:
                leak = leak + lw
            else:
                u = np.minimum(1.0, np.maximum(0.0, busy[r] / total_mid))
                leak = leak + lw * (u + (1 - u) * T.POWER_GATE_RESIDUAL)
    else:
        for lw in area.leak.values():
            leak = leak + lw
    t_step = decode_s / G
    e_tok = dyn + leak * t_step / B
    out["energy_per_token_j"] = e_tok
    out["energy_per_token_mj"] = e_tok * 1e3
    out["power_w"] = e_tok * B / t_step
    out["tokens_per_s_per_mm2"] = out["decode_tokens_per_s_total"] / area.total
    if train:
        from romsim.perf.train import ADAM_STATE_BYTES, GRAD_BYTES

        pev["clock_cycles"] = pre  # PerfModel.prefill_events: the prefill's cycles
        e_fwd = 0.0
        for k, c in pev.items():
            e_fwd = e_fwd + c * area.actions[k]
        e_bwd = e_fwd * bwd / fwd
        per_layer = sum(
            sum(model.linear_shape(k)) for k in v.base.lora.targets if k in LINEAR_KINDS
        )
        lp = v("lora.rank") * per_layer * nl
        state = lp * (2 * v("lora.weight_bits") / 8 + GRAD_BYTES + 2 * ADAM_STATE_BYTES)
        opt = np.maximum(state / (d.U * d.srbw), lp * 10 / (d.VU * v("vector.lanes_per_unit"))) + v(
            "vector.op_latency_cycles"
        )
        cycles = fwd + bwd + opt
        a = area.actions
        e_opt = (
            state / 2 * (a["sram_read_bytes"] + a["sram_write_bytes"])
            + lp * 10 * a["vec_ops"]
            + opt * a["clock_cycles"]
        )
        leak_all = 0.0
        for lw in area.leak.values():
            leak_all = leak_all + lw
        out["train_step_time_s"] = cycles / f
        out["train_step_energy_j"] = e_fwd + e_bwd + e_opt + leak_all * cycles / f
    nd = v.n
    return {k: np.broadcast_to(np.asarray(x, dtype=np.float64), (nd,)) for k, x in out.items()}


# ---------------------------------------------------------------------------- entry points
def _as_len(x: int | Arr, n: int, name: str) -> tuple[Arr, Arr]:
    a = np.asarray(x)
    if a.ndim == 0:
        a = np.full(n, a.item())
    if a.shape != (n,):
        raise RomsimInputError(name, None, f"must be a scalar or an array of length {n}")
    xf = a.astype(np.float64)
    ok = np.isfinite(xf) & (xf >= 1) & (xf == np.floor(np.where(np.isfinite(xf), xf, 0)))
    return np.where(ok, xf, 1).astype(np.int64), ok


def _codes(a: Any, n: int, default: str) -> tuple[Arr, Arr]:
    """(unique values as str, inverse) of a categorical array (``default`` when not given)."""
    if a is None:
        return np.array([default]), np.zeros(n, dtype=np.int64)
    u, inv = np.unique(np.asarray(a).astype(str), return_inverse=True)
    return u, inv.reshape(-1)


def evaluate_batch(
    base: ChipConfig,
    model: ModelSpec,
    params: AbcMapping[str, Any],
    prompt_len: int | Arr = 128,
    gen_len: int | Arr = 128,
    fields: Sequence[str] | None = None,
    prune: AbcMapping[str, Any] | None = None,
    train: bool = False,
) -> BatchResult:
    """Every field of :func:`romsim.explore.fields.scalar_fields` for N designs.

    ``params``: dotted ChipConfig keys -> 1-D arrays of length N (numeric fields), plus
    ``"rom.style"`` and ``"quant"`` (arrays of str). Keys not given come from ``base``.
    ``prompt_len`` / ``gen_len``: scalars or arrays of length N.
    ``prune``: constraints checked by the cheap pass before the full model, any of
    ``fits_rom`` (True: drop designs whose weights do not fit the ROM), ``area_mm2_max``,
    ``fits_sram`` (True), ``max_context_tokens_min``; pruned designs keep their cheap fields
    (``CHEAP_FIELDS``) and get NaN in the others. ``train``: the two training fields through the
    scalar path (slow; NaN otherwise)."""
    prune = dict(prune or {})
    bad = set(prune) - set(PRUNE_KEYS)
    if bad:
        raise RomsimInputError("prune", sorted(bad), f"allowed keys: {', '.join(PRUNE_KEYS)}")
    n = None
    for k, a in params.items():
        a = np.asarray(a)
        if a.ndim != 1 or (n is not None and len(a) != n):
            raise RomsimInputError(k, None, "every params array must be 1-D, all of one length")
        n = len(a)
    if n is None:
        n = max(np.size(prompt_len), np.size(gen_len))
    valid = np.ones(n, dtype=bool)
    arrays: dict[str, Arr] = {}
    for k, a in params.items():
        if k in CATEGORICAL:
            continue
        x, ok = _check_numeric(k, a)
        arrays[k] = x
        valid &= ok
    rows = arrays.get("mesh.rows", np.full(n, base.mesh.rows))
    vr = arrays.get("mesh.vector_rows", np.full(n, base.mesh.vector_rows))
    valid &= vr < rows
    if "tech.process_nm" in arrays:
        valid &= np.isin(arrays["tech.process_nm"], np.array(nodes_nm()))
    P, okp = _as_len(prompt_len, n, "prompt_len")
    G, okg = _as_len(gen_len, n, "gen_len")
    valid &= okp & okg
    # categorical combinations: unique values (np.unique, no per-design Python loop)
    style_a = params.get("rom.style")
    quant_a = params.get("quant")
    su, sinv = _codes(style_a, n, base.rom.style)
    qu, qinv = _codes(quant_a, n, "")
    nm = arrays.get("tech.process_nm", np.full(n, base.tech.process_nm, dtype=np.int64))
    nu, ninv = np.unique(nm, return_inverse=True)
    valid &= np.isin(su, np.array(ROM_STYLES))[sinv]
    specs: list[QuantSpec | None] = []
    for q in qu.tolist():
        try:
            specs.append(base.quant if q == "" else named_quant(str(q)))
        except RomsimInputError:
            specs.append(None)
    valid &= np.array([s is not None for s in specs], dtype=bool)[qinv]

    want = [k for k in FIELDS if train or k not in TRAIN_FIELDS] if fields is None else list(fields)
    out: dict[str, Arr] = {}
    for k in FIELDS:
        out[k] = np.zeros(n, dtype=bool) if k in BOOL_FIELDS else np.full(n, np.nan)
    evaluated = np.zeros(n, dtype=bool)
    pruned = {"invalid": int((~valid).sum())} | {k: 0 for k in prune}

    code = (sinv * len(qu) + qinv) * len(nu) + ninv
    vidx = np.nonzero(valid)[0]
    ucodes, inv = np.unique(code[vidx], return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(ucodes) + 1))
    for gi, c in enumerate(ucodes.tolist()):
        si, rest = divmod(c, len(qu) * len(nu))
        qi, ni = divmod(rest, len(nu))
        s, spec, p = str(su[si]), specs[qi], int(nu[ni])
        assert spec is not None
        idx = vidx[order[bounds[gi] : bounds[gi + 1]]]
        mixed = any(spec.for_kind(k).mix is not None for k in (*LINEAR_KINDS, "lm_head", "embed"))
        if mixed:
            _scalar_fallback(
                base, model, params, arrays, idx, P, G, out, evaluated, prune, pruned, train
            )
            continue
        g = _make_group(base, model, spec, s, p)
        grp_arrays = dict(arrays)
        grp_arrays.pop("tech.process_nm", None)
        for c0 in range(0, len(idx), CHUNK):
            cidx = idx[c0 : c0 + CHUNK]
            _run_chunk(base, model, g, grp_arrays, cidx, P, G, out, evaluated, prune, pruned, train)
    res = {k: out[k] for k in want}
    return BatchResult(res, valid, evaluated, pruned)


def _run_chunk(
    base: ChipConfig,
    model: ModelSpec,
    g: _Group,
    arrays: dict[str, Arr],
    cidx: Arr,
    P: Arr,
    G: Arr,
    out: dict[str, Arr],
    evaluated: Arr,
    prune: dict[str, Any],
    pruned: dict[str, int],
    train: bool = False,
) -> None:
    gbase = base.model_copy(
        update={
            "quant": g.quant,
            "rom": base.rom.model_copy(update={"style": g.style}),
            "tech": base.tech.model_copy(update={"process_nm": g.node.nm}),
        }
    )
    v = _V(gbase, arrays, cidx)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = _derived(v, g)
        Pc, Gc = P[cidx], G[cidx]
        cheap, _ = _cheap(v, d, g, model, Pc, Gc)
        for k, x in cheap.items():
            out[k][cidx] = x
        keep = np.ones(len(cidx), dtype=bool)
        if prune.get("fits_rom"):
            drop = keep & ~cheap["fits_rom"]
            pruned["fits_rom"] += int(drop.sum())
            keep &= ~drop
        if "area_mm2_max" in prune:
            drop = keep & ~(cheap["area_mm2"] <= prune["area_mm2_max"])
            pruned["area_mm2_max"] += int(drop.sum())
            keep &= ~drop
        if prune.get("fits_sram"):
            drop = keep & ~cheap["fits_sram"]
            pruned["fits_sram"] += int(drop.sum())
            keep &= ~drop
        if "max_context_tokens_min" in prune:
            drop = keep & ~(cheap["max_context_tokens"] >= prune["max_context_tokens_min"])
            pruned["max_context_tokens_min"] += int(drop.sum())
            keep &= ~drop
        if not keep.any():
            return
        if not keep.all():
            v = v.sub(keep)
            d = _derived(v, g)
            Pc, Gc = Pc[keep], Gc[keep]
        full = _full(v, d, g, model, Pc, Gc, train)
    sel = cidx[keep]
    for k, x in full.items():
        out[k][sel] = x
    evaluated[sel] = True


def _design_chip(
    base: ChipConfig, params: AbcMapping[str, Any], arrays: dict[str, Arr], i: int
) -> ChipConfig:
    """The ChipConfig of design ``i`` (scalar reference)."""
    ov: dict[str, Any] = {}
    for k, a in params.items():
        if k in CATEGORICAL:
            ov[k] = str(np.asarray(a, dtype=object)[i])
        else:
            x = arrays[k][i]
            ov[k] = int(x) if arrays[k].dtype.kind == "i" else float(x)
    return base.with_overrides(**ov)


def _scalar_design(
    base: ChipConfig,
    model: ModelSpec,
    params: AbcMapping[str, Any],
    arrays: dict[str, Arr],
    i: int,
    p: int,
    gl: int,
    train: bool = False,
) -> dict:
    from romsim.explore.fields import scalar_fields

    return scalar_fields(model, _design_chip(base, params, arrays, i), p, gl, train=train)


def _scalar_fallback(
    base: ChipConfig,
    model: ModelSpec,
    params: AbcMapping[str, Any],
    arrays: dict[str, Arr],
    idx: Arr,
    P: Arr,
    G: Arr,
    out: dict[str, Arr],
    evaluated: Arr,
    prune: dict[str, Any],
    pruned: dict[str, int],
    train: bool = False,
) -> None:
    """Designs the vectorized path does not cover (mixed-width formats), one scalar estimate
    each; pruning is applied to their results."""
    for i in idx.tolist():
        sf = _scalar_design(base, model, params, arrays, i, int(P[i]), int(G[i]), train)
        reason = None
        if prune.get("fits_rom") and not sf["fits_rom"]:
            reason = "fits_rom"
        elif "area_mm2_max" in prune and not sf["area_mm2"] <= prune["area_mm2_max"]:
            reason = "area_mm2_max"
        elif prune.get("fits_sram") and not sf["fits_sram"]:
            reason = "fits_sram"
        elif (
            "max_context_tokens_min" in prune
            and not sf["max_context_tokens"] >= prune["max_context_tokens_min"]
        ):
            reason = "max_context_tokens_min"
        for k, x in sf.items():
            if k in out and (reason is None or k in CHEAP_FIELDS):
                out[k][i] = x
        if reason is not None:
            pruned[reason] += 1
        else:
            evaluated[i] = True


def evaluate_designs(
    base: ChipConfig,
    model: ModelSpec,
    params: AbcMapping[str, Any],
    prompt_len: int | Arr = 128,
    gen_len: int | Arr = 128,
    fields: Sequence[str] | None = None,
    prune: AbcMapping[str, Any] | None = None,
) -> dict[str, Arr]:
    """Field -> array of length N (see :func:`evaluate_batch`), plus ``"valid"`` and
    ``"evaluated"`` (booleans)."""
    r = evaluate_batch(base, model, params, prompt_len, gen_len, fields, prune)
    return {**r.fields, "valid": r.valid, "evaluated": r.evaluated}


__all__ = ["BatchResult", "evaluate_batch", "evaluate_designs", "CHEAP_FIELDS", "PRUNE_KEYS"]
