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
- ``q4_0``, ``q4_1``, ``q8_0``  the GGUF block layouts of llama.cpp (32 weights per block;
                fp16 d; q4_1 adds an fp16 minimum m: w = d*q + m).

ROM word layout: defined once in :mod:`romsim.rom.layout` (:class:`~romsim.rom.layout.RomLayout`),
which the mapping, the performance model, the ROM image, the kernels and the RTL all use;
:meth:`WeightFormat.words_per_group` and :meth:`WeightFormat.metas_per_word` ask it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from romsim.errors import RomsimInputError
from romsim.modelspec import ATTN_KINDS, LINEAR_KINDS, MLP_KINDS, ModelSpec

QuantKind = Literal["affine", "symmetric", "nf4", "q4_0", "q4_1", "q8_0"]
_GGUF_FIXED = {"q4_0": (4, 32, 16, 0), "q4_1": (4, 32, 16, 16), "q8_0": (8, 32, 16, 0)}


class WeightFormat(BaseModel):
    """How one tensor's weights are coded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: QuantKind = "affine"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(128, ge=8, le=4096)
    scale_bits: Literal[8, 16, 32] = 16
    zero_bits: int | None = Field(None, ge=0, le=16, description="default: bits for affine, else 0")

    @model_validator(mode="after")
    def _check(self) -> WeightFormat:
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
        elif self.zero_bits is None:
            object.__setattr__(self, "zero_bits", self.bits if self.kind == "affine" else 0)
        if self.group_size % 8:
            raise ValueError(f"group_size must be a multiple of 8 (got {self.group_size})")
        return self

    @property
    def meta_bits(self) -> int:
        """Metadata bits per group (scale + zero/min)."""
        return self.scale_bits + int(self.zero_bits or 0)

    @property
    def bits_per_weight(self) -> float:
        """Effective storage bits per weight, metadata included."""
        return self.bits + self.meta_bits / self.group_size

    def words_per_group(self, word_bits: int) -> int:
        """ROM words of one group's codes (:attr:`romsim.rom.layout.RomLayout.words_per_group`)."""
        from romsim.rom.layout import RomLayout

        return RomLayout.for_format(self, word_bits).words_per_group

    def metas_per_word(self, word_bits: int) -> int:
        """Metadata fields per ROM word (:attr:`romsim.rom.layout.RomLayout.metas_per_word`)."""
        from romsim.rom.layout import RomLayout

        return RomLayout.for_format(self, word_bits).metas_per_word

    def label(self) -> str:
        if self.kind == "affine":
            return f"w{self.bits}g{self.group_size}"
        if self.kind == "symmetric":
            return f"w{self.bits}g{self.group_size}s"
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
    "wB (e.g. w4), wBgG (w4g128), wBgGs (symmetric), wBattn-wBmlp (w4attn-w2mlp, each part may "
    "carry gG), nf4, q4_0, q4_1, q8_0"
)
_RE_PLAIN = re.compile(r"w(\d+)(?:g(\d+))?(s?)")
_RE_SPLIT = re.compile(r"w(\d+)(?:g(\d+))?(s?)attn-w(\d+)(?:g(\d+))?(s?)mlp")


def _format(name: str, bits: str, group: str | None, sym: str) -> WeightFormat:
    try:
        return WeightFormat(
            kind="symmetric" if sym else "affine",
            bits=int(bits),
            group_size=int(group) if group else 128,
        )
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "format"
        raise RomsimInputError("quant", name, f"{field}: {err['msg']}") from None


def named_quant(name: str) -> QuantSpec:
    """Short names used on the command line and in chip files: ``w4g128``, ``w2g64``,
    ``w4g128s`` (symmetric), ``nf4``, ``q4_1``, ``w4attn-w2mlp`` (attention at 4 bits, FFN at 2
    bits, g128; ``w4g64attn-w2g128mlp`` names each group size). Anything else is refused."""
    if not isinstance(name, str):
        raise RomsimInputError("quant", name, f"must be a string of the form {_NAMED_FORMS}")
    n = name.strip().lower()
    if n in _GGUF_FIXED:
        b, g, _, _ = _GGUF_FIXED[n]
        return QuantSpec(default=WeightFormat(kind=n, bits=b, group_size=g))
    if n == "nf4":
        return QuantSpec(default=WeightFormat(kind="nf4", bits=4, group_size=64))
    if m := _RE_PLAIN.fullmatch(n):
        return QuantSpec(default=_format(name, *m.groups()))
    if m := _RE_SPLIT.fullmatch(n):
        attn = _format(name, *m.groups()[:3])
        mlp = _format(name, *m.groups()[3:])
        return QuantSpec(default=attn, overrides={"attn": attn, "mlp": mlp})
    raise RomsimInputError("quant", name, f"unknown format; use {_NAMED_FORMS}")


def linear_weight_bits(model: ModelSpec, quant: QuantSpec) -> float:
    """Ideal storage bits of all decoder linear layers (metadata included, no word padding)."""
    total = 0.0
    for kind in LINEAR_KINDS:
        n, k = model.linear_shape(kind)
        total += n * k * quant.for_kind(kind).bits_per_weight
    return total * model.n_layers


def lm_head_weight_bits(model: ModelSpec, quant: QuantSpec) -> float:
    return model.vocab_size * model.hidden_size * quant.for_kind("lm_head").bits_per_weight


def model_rom_bytes(model: ModelSpec, quant: QuantSpec, lm_head_in_rom: bool) -> float:
    """Ideal ROM bytes for the tensors the chip keeps in ROM (before cell/word padding)."""
    bits = linear_weight_bits(model, quant)
    if lm_head_in_rom:
        bits += lm_head_weight_bits(model, quant)
    return bits / 8
