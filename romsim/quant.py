"""Weight quantization formats as data, and the ROM bytes a model needs under them.

A format fixes, per group of ``group_size`` consecutive weights along a row's input dimension:
the code width (``bits``), how codes map to values (``kind``) and the per-group metadata stored
beside the codes (a ``scale_bits`` scale and a ``zero_bits`` zero point or minimum).

Kinds
- ``affine``    w = s * (q - z), q and z unsigned ``bits``-wide, s FP16 (ROMA: "groups of 128
                weights, FP16 scale and a low-bit zero point per group").
- ``symmetric`` w = s * (q - 2**(bits-1)); no stored zero.
- ``nf4``       4-bit index into the NormalFloat-4 table times an absmax scale
                (QLoRA, Dettmers et al. 2023; bitsandbytes uses blocks of 64).
- ``q4_0``, ``q4_1``, ``q8_0``, ``q5_0``, ``q5_1``  the GGUF block layouts of llama.cpp (32
                weights per block; fp16 d; q4_1/q5_1 add an fp16 minimum m: w = d*q + m).
- ``q2_k``, ``q3_k``, ``q4_k``, ``q5_k``, ``q6_k``  llama.cpp's K-quants: 256-weight
                super-blocks (the group) with fp16 d (and dmin for q2_k/q4_k/q5_k) and packed
                sub-block scales/mins (:attr:`WeightFormat.sub_scale_bits`, ROM rule 9):
                2.625, 3.4375, 4.5, 5.5, 6.5625 bits/weight.
- ``tq1_0``, ``tq2_0``  llama.cpp's ternary blocks: 256 weights, one fp16 d, w = d * t with t
                in {-1, 0, +1}; TQ2_0 stores 2-bit codes (2.0625 bits/weight), TQ1_0 base-3
                digits, 5 a byte (``packing = "base3"``, 52 code bytes a block: 1.6875
                bits/weight; ROM rule 9b). Unlike ``ternary`` their scale is per block, in ROM.
- ``ternary``   BitNet b1.58 (Ma et al. 2024): w = s * t, t in {-1, 0, +1}, one absmean fp16
                scale ``s`` per *tensor* (``scale_bits`` is its width), so no per-group metadata;
                the per-tensor scale sits in the cell's dequantizer register, not in ROM words,
                and counts as a per-matrix constant in :func:`model_rom_bytes`. ``packing``:
                ``"bits"`` stores 2-bit codes (2 bits/weight), ``"base3"`` packs 5 trits per byte
                (3**5 = 243 <= 256: 1.6 bits/weight; ROM rule 3b in :mod:`romsim.rom.layout`).
                ``group_size`` is then only the packing/dealing unit (default 128 for 2-bit codes,
                160 = 5 * 32 trits = 32 bytes for base-3, which fills 64-bit words exactly).

Code widths: affine and symmetric take ``bits`` in :data:`FORMAT_BITS` (2, 3, 4, 5, 6, 8); the
hardware model (ROM layout counting, mapping, perf, area) costs every one of them. The Numba
kernels, the functional path and the RTL implement 2, 3, 4 and 8 only and refuse the others
(argparse choices / :class:`romsim.errors.RomsimInputError`).

Mixes within a tensor (``mix``): a fraction ``f`` of a matrix's groups at a second width (as in
mixed 3/6-bit hard-wired chips), the rest at ``bits``; same kind and group size, each class with
its own metadata field (affine zero points follow each class's width unless ``mix.zero_bits``
is given). Ideal bits per weight ``(1-f) * (b1 + M1/G) + f * (b2 + M2/G)``. Which groups are
wide and how the two classes are dealt to cells: :mod:`romsim.mapping`.

Named formats (:func:`named_quant`): ``wB``, ``wBgG``, ``wBgGs``, ``wBattn-wBmlp``, ``nf4``,
``q4_0``, ``q4_1``, ``q8_0``, ``q5_0``, ``q5_1``, ``q2_k`` ... ``q6_k``, ``tq1_0``, ``tq2_0``,
``ternary[gG]``, ``ternary-b3[gG]``, and a mix suffix on a plain
affine/symmetric name: ``<plain>+wBxF`` (``w3g128+w6x0.25``: 25 % of the groups at 6 bits;
``F`` a decimal fraction strictly between 0 and 1, the wide groups share ``gG`` and ``s``).

ROM word layout: defined once in :mod:`romsim.rom.layout` (:class:`~romsim.rom.layout.RomLayout`),
which the mapping, the performance model, the ROM image, the kernels and the RTL all use;
:meth:`WeightFormat.words_per_group` and :meth:`WeightFormat.metas_per_word` ask it.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from romsim.errors import RomsimInputError
from romsim.modelspec import ATTN_KINDS, LINEAR_KINDS, MLP_KINDS, ModelSpec

# The NormalFloat-4 codebook of QLoRA (Dettmers et al. 2023) exactly as bitsandbytes holds it
# (bitsandbytes.functional.get_4bit_type("nf4"), fp32): the one copy that the kernels
# (romsim.kernels.qmatmul.NF4_TABLE) and the RTL codebook decode (romsim.rtl.params) read.
NF4_VALUES: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# The cell's NF4 codebook (and the kernels' NF4 integer path, romsim.kernels.codebook): fixed
# point, round(NF4_VALUES[q] * 2**NF4_FRAC_BITS), within 2**-11 of the float table.
NF4_FRAC_BITS = 10
# ternary digit d (2-bit code or base-3 digit) -> weight t = d - 1; code 3 is never written and
# decodes to 0
TERNARY_TABLE: tuple[int, ...] = (-1, 0, 1, 0)


def nf4_fixed_table(frac_bits: int = NF4_FRAC_BITS) -> tuple[int, ...]:
    """``round(NF4_VALUES[q] * 2**frac_bits)`` (round half away from zero; no entry is a tie),
    signed ``frac_bits + 2`` bits: the codebook the hardware stores."""
    return tuple(
        int(math.floor(abs(v) * (1 << frac_bits) + 0.5)) * (1 if v >= 0 else -1) for v in NF4_VALUES
    )


QuantKind = Literal[
    "affine",
    "symmetric",
    "nf4",
    "q4_0",
    "q4_1",
    "q8_0",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "tq1_0",
    "tq2_0",
    "ternary",
]
CodeBits = Literal[2, 3, 4, 5, 6, 8]
FORMAT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)  # code widths the hardware model costs
Packing = Literal["bits", "base3"]
TRITS_PER_BYTE = 5  # 3**5 = 243 <= 256
TERNARY_GROUP = {"bits": 128, "base3": 160}  # default packing units (see the module doc)
# GGUF kinds: (bits, group_size, scale_bits, zero_bits). K-quants: group = the 256-weight
# super-block, scale = fp16 d, zero = fp16 dmin (Q2_K, Q4_K, Q5_K); their packed sub-block
# scales/mins are _GGUF_SUB_SCALE_BITS more metadata bits per super-block (ROM rule 9).
_GGUF_FIXED = {
    "q4_0": (4, 32, 16, 0),
    "q4_1": (4, 32, 16, 16),
    "q8_0": (8, 32, 16, 0),
    "q5_0": (5, 32, 16, 0),
    "q5_1": (5, 32, 16, 16),
    "q2_k": (2, 256, 16, 16),
    "q3_k": (3, 256, 16, 0),
    "q4_k": (4, 256, 16, 16),
    "q5_k": (5, 256, 16, 16),
    "q6_k": (6, 256, 16, 0),
    "tq1_0": (2, 256, 16, 0),
    "tq2_0": (2, 256, 16, 0),
}
# the GGUF ternary kinds' fixed packing: TQ1_0's base-3 digits, TQ2_0's 2-bit codes (rule 9b)
_GGUF_PACKING = {"tq1_0": "base3", "tq2_0": "bits"}
# Q2_K: 16 x (4-bit scale, 4-bit min); Q3_K: 16 x 6-bit signed scales; Q4_K/Q5_K: 8 x (6-bit
# scale, 6-bit min); Q6_K: 16 x int8 scales.
_GGUF_SUB_SCALE_BITS = {"q2_k": 128, "q3_k": 96, "q4_k": 96, "q5_k": 96, "q6_k": 128}
_MIXABLE = ("affine", "symmetric")


class MixSpec(BaseModel):
    """A second code width for a fraction of a matrix's groups (``mix = {bits = 6, fraction =
    0.25}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    bits: CodeBits
    fraction: float = Field(gt=0, lt=1, description="share of the groups at mix.bits")
    zero_bits: int | None = Field(
        None, ge=0, le=16, description="default: mix.bits for affine, else 0"
    )


class WeightFormat(BaseModel):
    """How one tensor's weights are coded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: QuantKind = "affine"
    bits: CodeBits = 4
    group_size: int = Field(128, ge=8, le=4096)
    scale_bits: Literal[8, 16, 32] = 16
    zero_bits: int | None = Field(None, ge=0, le=16, description="default: bits for affine, else 0")
    packing: Packing = "bits"
    mix: MixSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> WeightFormat:
        given = self.model_fields_set
        if self.kind in _GGUF_PACKING:
            want = _GGUF_PACKING[self.kind]
            if "packing" in given and self.packing != want:
                raise ValueError(f"{self.kind} is fixed at packing={want!r} (got {self.packing!r})")
            object.__setattr__(self, "packing", want)
        elif self.packing != "bits" and self.kind != "ternary":
            raise ValueError(f"packing {self.packing!r} is for ternary weights (kind={self.kind})")
        if self.mix is not None and self.kind not in _MIXABLE:
            raise ValueError(f"mix needs kind affine or symmetric (got {self.kind})")
        if self.kind in _GGUF_FIXED:
            b, g, s, z = _GGUF_FIXED[self.kind]
            if (self.bits, self.group_size) != (b, g):
                raise ValueError(
                    f"{self.kind} is fixed at bits={b}, group_size={g} "
                    f"(got bits={self.bits}, group_size={self.group_size})"
                )
            object.__setattr__(self, "scale_bits", s)
            object.__setattr__(self, "zero_bits", z)
        elif self.kind == "nf4":
            if self.bits != 4:
                raise ValueError(f"nf4 codes are 4 bits (got bits={self.bits})")
            if self.zero_bits is None:
                object.__setattr__(self, "zero_bits", 0)
        elif self.kind == "ternary":
            if "bits" in given and self.bits != 2:
                raise ValueError(f"ternary codes are 2 bits (got bits={self.bits})")
            if self.zero_bits:
                raise ValueError(f"ternary weights have no zero point (got {self.zero_bits})")
            object.__setattr__(self, "bits", 2)
            object.__setattr__(self, "zero_bits", 0)
            if "group_size" not in given:
                object.__setattr__(self, "group_size", TERNARY_GROUP[self.packing])
        elif self.zero_bits is None:
            object.__setattr__(self, "zero_bits", self.bits if self.kind == "affine" else 0)
        if self.group_size % 8:
            raise ValueError(f"group_size must be a multiple of 8 (got {self.group_size})")
        if self.mix is not None:
            if self.mix.bits == self.bits:
                raise ValueError(f"mix.bits must differ from bits (both {self.bits})")
            if self.mix.zero_bits is None:
                zb = self.mix.bits if self.kind == "affine" else 0
                object.__setattr__(self, "mix", self.mix.model_copy(update={"zero_bits": zb}))
        return self

    # ---- the classes of a (possibly mixed) format ------------------------------------------------
    @property
    def base_format(self) -> WeightFormat:
        """The format of the groups at ``bits`` (this format without its mix)."""
        return self if self.mix is None else self.model_copy(update={"mix": None})

    @property
    def mix_format(self) -> WeightFormat | None:
        """The format of the wide (``mix.bits``) groups, None without a mix."""
        if self.mix is None:
            return None
        return self.model_copy(
            update={"bits": self.mix.bits, "zero_bits": self.mix.zero_bits, "mix": None}
        )

    @property
    def mix_fraction(self) -> float:
        return 0.0 if self.mix is None else self.mix.fraction

    def classes(self) -> list[tuple[WeightFormat, float]]:
        """(single-width format, share of the groups): one entry, or two for a mix."""
        if self.mix is None:
            return [(self, 1.0)]
        f = self.mix.fraction
        wide = self.mix_format
        assert wide is not None
        return [(self.base_format, 1.0 - f), (wide, f)]

    # ---- bits ------------------------------------------------------------------------------------
    @property
    def sub_scale_bits(self) -> int:
        """Packed sub-block scale/min bits per group (K-quant super-blocks), else 0."""
        return _GGUF_SUB_SCALE_BITS.get(self.kind, 0)

    @property
    def meta_bits(self) -> int:
        """Per-group metadata bits (scale + zero/min, + sub-block scales for K-quants) of the
        base class; 0 for ternary (its one scale is per tensor: :attr:`tensor_meta_bits`)."""
        if self.kind == "ternary":
            return 0
        return self.scale_bits + int(self.zero_bits or 0) + self.sub_scale_bits

    @property
    def tensor_meta_bits(self) -> int:
        """Metadata bits stored once per matrix (ternary's absmean scale), 0 otherwise."""
        return self.scale_bits if self.kind == "ternary" else 0

    @property
    def code_bits_per_weight(self) -> float:
        """Ideal code bits per weight of one class: ``bits``, or 8/5 for base-3 packing (TQ1_0:
        its block's whole bytes, ``8 * ceil(256/5) / 256`` = 1.625)."""
        if self.packing == "base3":
            if self.kind in _GGUF_FIXED:
                return 8 * math.ceil(self.group_size / TRITS_PER_BYTE) / self.group_size
            return 8 / TRITS_PER_BYTE
        return float(self.bits)

    @property
    def bits_per_weight(self) -> float:
        """Effective storage bits per weight, per-group metadata included (ideal: no word
        padding; a mix weighs its two classes by their fractions)."""
        return sum(
            share * (f.code_bits_per_weight + f.meta_bits / f.group_size)
            for f, share in self.classes()
        )

    def words_per_group(self, word_bits: int) -> int:
        """ROM words of one group's codes (:attr:`romsim.rom.layout.RomLayout.words_per_group`);
        of the base class for a mix (the wide class: ``mix_format.words_per_group``)."""
        from romsim.rom.layout import RomLayout

        return RomLayout.for_format(self, word_bits).words_per_group

    def metas_per_word(self, word_bits: int) -> int:
        """Metadata fields per ROM word (:attr:`romsim.rom.layout.RomLayout.metas_per_word`);
        of the base class for a mix."""
        from romsim.rom.layout import RomLayout

        return RomLayout.for_format(self, word_bits).metas_per_word

    def label(self) -> str:
        if self.kind == "ternary":
            base = "ternary-b3" if self.packing == "base3" else "ternary"
            g = "" if self.group_size == TERNARY_GROUP[self.packing] else f"g{self.group_size}"
            return base + g
        if self.kind in ("affine", "symmetric"):
            sym = "s" if self.kind == "symmetric" else ""
            out = f"w{self.bits}g{self.group_size}{sym}"
            if self.mix is not None:
                frac = format(Decimal(repr(self.mix.fraction)), "f")  # shortest, no exponent
                out += f"+w{self.mix.bits}x{frac}"
            return out
        return self.kind


class QuantSpec(BaseModel):
    """Formats for a whole model: a default plus overrides by layer type.

    Override keys: a linear kind (q k v o gate up down), ``attn`` (q k v o), ``mlp`` (gate up
    down), ``lm_head`` and ``embed``. Precedence: exact kind, then attn/mlp, then ``default``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: WeightFormat = WeightFormat()
    overrides: dict[str, WeightFormat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_keys(self) -> QuantSpec:
        allowed = set(LINEAR_KINDS) | {"attn", "mlp", "lm_head", "embed"}
        for k in self.overrides:
            if k not in allowed:
                raise ValueError(
                    f"unknown override key {k!r}; allowed: {', '.join(sorted(allowed))}"
                )
        return self

    def for_kind(self, kind: str) -> WeightFormat:
        if kind in self.overrides:
            return self.overrides[kind]
        if kind in ATTN_KINDS and "attn" in self.overrides:
            return self.overrides["attn"]
        if kind in MLP_KINDS and "mlp" in self.overrides:
            return self.overrides["mlp"]
        return self.default

    def label(self) -> str:
        parts = [self.default.label()]
        parts += [f"{k}={v.label()}" for k, v in sorted(self.overrides.items())]
        return ",".join(parts)


_NAMED_FORMS = (
    "wB (e.g. w4, B in 2 3 4 5 6 8), wBgG (w4g128), wBgGs (symmetric), wBattn-wBmlp "
    "(w4attn-w2mlp, each part may carry gG), a mix wBgG+wBxF (w3g128+w6x0.25), nf4, q4_0, q4_1, "
    "q8_0, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, tq1_0, tq2_0, ternary, ternary-b3 (each may end "
    "in gG)"
)
_RE_PLAIN = re.compile(r"w(\d+)(?:g(\d+))?(s?)(?:\+w(\d+)x(\d*\.\d+))?")
_RE_SPLIT = re.compile(r"w(\d+)(?:g(\d+))?(s?)attn-w(\d+)(?:g(\d+))?(s?)mlp")
_RE_TERNARY = re.compile(r"ternary(-b3)?(?:g(\d+))?")


def _input_error(name: str, e: ValidationError) -> RomsimInputError:
    err = e.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or "format"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return RomsimInputError("quant", name, f"{field}: {msg}")


def _format(
    name: str,
    bits: str,
    group: str | None,
    sym: str,
    mix_bits: str | None = None,
    mix_fraction: str | None = None,
) -> WeightFormat:
    data: dict = {
        "kind": "symmetric" if sym else "affine",
        "bits": int(bits),
        "group_size": int(group) if group else 128,
    }
    if mix_bits is not None:
        data["mix"] = {"bits": int(mix_bits), "fraction": float(mix_fraction or "nan")}
    try:
        return WeightFormat.model_validate(data)
    except ValidationError as e:
        raise _input_error(name, e) from None


def named_format(name: str) -> WeightFormat:
    """One format by name (any :func:`named_quant` name but the attn/mlp split)."""
    q = named_quant(name)
    if q.overrides:
        raise RomsimInputError("quant", name, "names two formats; give a single format here")
    return q.default


def named_quant(name: str) -> QuantSpec:
    """Short names used on the command line and in chip files: ``w4g128``, ``w2g64``,
    ``w4g128s`` (symmetric), ``w5g128``, ``w6g64s``, ``nf4``, ``q4_1``, ``w4attn-w2mlp``
    (attention at 4 bits, FFN at 2 bits, g128; ``w4g64attn-w2g128mlp`` names each group size),
    ``w3g128+w6x0.25`` (a mix: 25 % of the groups at 6 bits), ``ternary`` (2-bit codes, g128),
    ``ternary-b3`` (base-3, 5 trits per byte, g160), ``ternary-b3g320``. Anything else is
    refused with one :class:`RomsimInputError`."""
    if not isinstance(name, str):
        raise RomsimInputError("quant", name, f"must be a string of the form {_NAMED_FORMS}")
    n = name.strip().lower()
    if n in _GGUF_FIXED:
        b, g, _, _ = _GGUF_FIXED[n]
        return QuantSpec(default=WeightFormat(kind=n, bits=b, group_size=g))
    if n == "nf4":
        return QuantSpec(default=WeightFormat(kind="nf4", bits=4, group_size=64))
    if m := _RE_TERNARY.fullmatch(n):
        data: dict = {"kind": "ternary", "packing": "base3" if m.group(1) else "bits"}
        if m.group(2):
            data["group_size"] = int(m.group(2))
        try:
            return QuantSpec(default=WeightFormat.model_validate(data))
        except ValidationError as e:
            raise _input_error(name, e) from None
    if m := _RE_PLAIN.fullmatch(n):
        return QuantSpec(default=_format(name, *m.groups()))
    if m := _RE_SPLIT.fullmatch(n):
        attn = _format(name, *m.groups()[:3])
        mlp = _format(name, *m.groups()[3:])
        return QuantSpec(default=attn, overrides={"attn": attn, "mlp": mlp})
    raise RomsimInputError("quant", name, f"unknown format; use {_NAMED_FORMS}")


def tied_table_format(quant: QuantSpec) -> WeightFormat:
    """The one format of a tied embedding/LM-head table stored once in ROM: ``overrides.lm_head``
    if given, else ``overrides.embed``, else ``default``; both given and different is refused."""
    lm, emb = quant.overrides.get("lm_head"), quant.overrides.get("embed")
    if lm is not None and emb is not None and lm != emb:
        raise RomsimInputError(
            "quant.overrides.embed",
            emb.label(),
            f"differs from quant.overrides.lm_head ({lm.label()}); a tied table is stored once "
            "in ROM in one format",
        )
    return lm or emb or quant.default


def rom_tables(
    model: ModelSpec, quant: QuantSpec, lm_head_in_rom: bool, embed_in_rom: bool
) -> list[tuple[str, WeightFormat]]:
    """The vocabulary tables (vocab x hidden) kept in ROM, as (kind, format), in execution
    order: ``"embed"`` (the input embedding, read one row per token) then ``"lm_head"``. With
    ``tie_word_embeddings`` and both placed in ROM the table is stored once, as ``"lm_head"``,
    and the embedding lookup reads its rows."""
    if model.tie_word_embeddings and lm_head_in_rom and embed_in_rom:
        return [("lm_head", tied_table_format(quant))]
    out = []
    if embed_in_rom:
        out.append(("embed", quant.for_kind("embed")))
    if lm_head_in_rom:
        out.append(("lm_head", quant.for_kind("lm_head")))
    return out


def linear_weight_bits(model: ModelSpec, quant: QuantSpec) -> float:
    """Ideal storage bits of all decoder linear layers (metadata included, no word padding;
    a per-tensor scale counts once per matrix)."""
    total = 0.0
    for kind in LINEAR_KINDS:
        n, k = model.linear_shape(kind)
        fmt = quant.for_kind(kind)
        total += n * k * fmt.bits_per_weight + fmt.tensor_meta_bits
    return total * model.n_layers


def table_weight_bits(model: ModelSpec, fmt: WeightFormat) -> float:
    """Ideal storage bits of one vocab x hidden table (embedding or LM head) in ``fmt``."""
    return model.vocab_size * model.hidden_size * fmt.bits_per_weight + fmt.tensor_meta_bits


def lm_head_weight_bits(model: ModelSpec, quant: QuantSpec) -> float:
    return table_weight_bits(model, quant.for_kind("lm_head"))


def model_rom_bytes(
    model: ModelSpec, quant: QuantSpec, lm_head_in_rom: bool, embed_in_rom: bool = False
) -> float:
    """Ideal ROM bytes for the tensors the chip keeps in ROM (before cell/word padding): the
    decoder linears, plus the LM head and/or the input embedding when placed in ROM (a tied
    table placed in ROM for both is counted once: :func:`rom_tables`)."""
    bits = linear_weight_bits(model, quant)
    for _, fmt in rom_tables(model, quant, lm_head_in_rom, embed_in_rom):
        bits += table_weight_bits(model, fmt)
    return bits / 8
