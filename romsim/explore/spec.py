"""Sweep specs: a TOML file naming a base chip, axes to vary, constraints, objectives and a
search method, validated before any work starts (one-line errors naming field, value, rule).

```toml
base = "roma-8b-w2"              # preset name or chip TOML (relative to the spec file)
model = "llama-3-8b"             # optional; default: the base chip's model

[workload]                       # optional fixed lengths (axes may vary them instead)
prompt_len = 128
gen_len = 128

[axes]                           # any dotted chip key, plus model / workload.*
"cell.cells_per_unit" = [64, 96, 128]
"rom.macro_rows" = {lin = [4096, 16384, 4]}   # ints stay ints for int fields
"tech.clock_hz" = {log = [2.5e8, 1e9, 3]}
quant = ["w2g128", "w4g128"]

[[constraints]]
field = "area_mm2"
op = "<="
value = 600
[[constraints]]
fits_rom = true                  # shorthand for field = "fits_rom", op = "==", value = true

[[objectives]]
field = "decode_tokens_per_s"
sense = "max"                    # default: the field's better direction

[search]
method = "grid"                  # grid | nsga2 | optuna
```
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from romsim.errors import RomsimInputError, from_validation_error
from romsim.explore.fields import FIELDS

MAX_AXIS_VALUES = 1_000_000
MAX_GRID = 10**10
WORKLOAD_KEYS = ("workload.prompt_len", "workload.gen_len")
# Chip keys that are not design parameters (labels) or not scalars.
_NOT_AXES = {"name", "description", "lora.targets"}
TRAIN_FIELDS = ("train_step_energy_j", "train_step_time_s")
BOOL_FIELDS = frozenset(k for k, (unit, _) in FIELDS.items() if unit == "bool")
OPS = ("<=", ">=", "==")


def _leaf_kind(annotation: Any) -> tuple[str, tuple | None]:
    """(kind, choices) of a chip field's annotation: int, float, bool, str (with Literal choices)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        kind = (
            "int" if all(isinstance(c, int) and not isinstance(c, bool) for c in choices) else "str"
        )
        return kind, choices
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _leaf_kind(args[0]) if len(args) == 1 else ("str", None)
    if annotation is bool:
        return "bool", None
    if annotation is int:
        return "int", None
    if annotation is float:
        return "float", None
    return "str", None


def chip_axis_kinds() -> dict[str, tuple[str, tuple | None]]:
    """Every dotted chip key an axis may vary, with its kind (walks ChipConfig's fields)."""
    from romsim.config import ChipConfig
    from romsim.quant import QuantSpec

    out: dict[str, tuple[str, tuple | None]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = info.annotation
            if key in _NOT_AXES:
                continue
            if ann is QuantSpec:
                out[key] = ("str", None)  # a format name: "w4g128", "w3g128+w6x0.25"
            elif isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
            else:
                out[key] = _leaf_kind(ann)

    walk(ChipConfig, "")
    out.pop("model", None)  # the model axis is handled apart (it also picks the ModelSpec)
    return out


def axis_kinds() -> dict[str, tuple[str, tuple | None]]:
    return chip_axis_kinds() | {
        "model": ("str", None),
        "workload.prompt_len": ("int", None),
        "workload.gen_len": ("int", None),
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Constraint(_Strict):
    field: str
    op: Literal["<=", ">=", "=="]
    value: float | bool

    @field_validator("field")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FIELDS:
            raise ValueError(f"unknown field; one of {', '.join(FIELDS)}")
        return v

    @property
    def name(self) -> str:
        v = str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}"
        return f"{self.field}{self.op}{v}"


class Objective(_Strict):
    field: str
    sense: Literal["min", "max"] | None = None

    @field_validator("field")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FIELDS:
            raise ValueError(f"unknown field; one of {', '.join(FIELDS)}")
        if v in BOOL_FIELDS:
            raise ValueError("a yes/no field is a constraint, not an objective")
        return v

    @property
    def resolved_sense(self) -> str:
        return self.sense or FIELDS[self.field][1] or "min"


class Search(_Strict):
    method: Literal["grid", "nsga2", "optuna"] = "grid"
    population: int = Field(40, ge=2, le=100_000)
    generations: int = Field(10, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    trials: int = Field(200, ge=1, le=10_000_000, description="optuna: trials in all")
    batch: int = Field(50, ge=1, le=1_000_000, description="optuna: trials asked per batch")
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    storage: str | None = Field(None, description="optuna storage URL (optuna-dashboard)")
    study_name: str | None = None
    chunk_size: int = Field(
        10_000, ge=1, le=10_000_000, description="grid designs per chunk (a Ray task each)"
    )


class Workload(_Strict):
    prompt_len: int = Field(128, ge=1, le=1 << 24)
    gen_len: int = Field(128, ge=1, le=1 << 24)


class Plot(_Strict):
    x: str | None = None
    y: str | None = None

    @field_validator("x", "y")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in FIELDS:
            raise ValueError(f"unknown field; one of {', '.join(FIELDS)}")
        return v


class _SpecFile(_Strict):
    base: str = "roma-3b-w4"
    model: str | None = None
    description: str = ""
    workload: Workload = Workload()
    axes: dict[str, Any]
    constraints: list[dict[str, Any]] = []
    objectives: list[Objective] = []
    search: Search = Search()
    plot: Plot = Plot()


DEFAULT_OBJECTIVES = (
    Objective(field="decode_tokens_per_s", sense="max"),
    Objective(field="energy_per_token_mj", sense="min"),
)


@dataclass(frozen=True)
class Axis:
    key: str
    kind: str
    values: tuple

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class SweepSpec:
    text: str  # verbatim
    source: str
    base: Any  # ChipConfig
    base_ref: str
    model: str
    workload: Workload
    axes: tuple[Axis, ...]
    constraints: tuple[Constraint, ...]
    objectives: tuple[Objective, ...]
    search: Search
    plot: Plot
    description: str = ""

    @property
    def grid_size(self) -> int:
        return math.prod(len(a) for a in self.axes)

    @property
    def needs_train(self) -> bool:
        used = {c.field for c in self.constraints} | {o.field for o in self.objectives}
        used |= {self.plot.x, self.plot.y}
        return any(f in used for f in TRAIN_FIELDS)

    @property
    def fields(self) -> list[str]:
        return [f for f in FIELDS if self.needs_train or f not in TRAIN_FIELDS]

    def axis(self, key: str) -> Axis | None:
        return next((a for a in self.axes if a.key == key), None)

    @property
    def models(self) -> tuple[str, ...]:
        a = self.axis("model")
        return tuple(a.values) if a else (self.model,)


def _flatten_axes(d: dict, prefix: str = "") -> dict[str, Any]:
    """TOML turns ``cell.cells_per_unit = [..]`` into nested tables; ranges are ``{lin|log=..}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not (set(v) & {"lin", "log"}):
            out |= _flatten_axes(v, key + ".")
        else:
            out[key] = v
    return out


def _range_values(key: str, kind: str, v: dict, source: str) -> list:
    field = f"axes.{key}"
    if set(v) - {"lin", "log"} or len(v) != 1:
        raise RomsimInputError(
            field, v, "a range is {lin = [start, stop, n]} or {log = [start, stop, n]}", source
        )
    how, r = next(iter(v.items()))
    f = f"{field}.{how}"
    if (
        not isinstance(r, list)
        or len(r) != 3
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
    ):
        raise RomsimInputError(f, r, "must be [start, stop, n] (numbers)", source)
    a, b, n = r
    if kind not in ("int", "float"):
        raise RomsimInputError(f, r, f"a range needs a numeric key; {key} is {kind}", source)
    if not isinstance(n, int) or not 1 <= n <= MAX_AXIS_VALUES:
        raise RomsimInputError(f, r, f"n must be an integer in 1..{MAX_AXIS_VALUES}", source)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise RomsimInputError(f, r, "start and stop must be finite", source)
    if n > 1 and not a < b:
        raise RomsimInputError(f, r, "start must be < stop", source)
    if how == "log" and a <= 0:
        raise RomsimInputError(f, r, "a log range needs start > 0", source)
    import numpy as np

    xs = np.geomspace(a, b, n) if how == "log" else np.linspace(a, b, n)
    if kind == "int":
        vals = list(dict.fromkeys(int(round(float(x))) for x in xs))
    else:
        vals = [float(x) for x in xs]
    return vals


def _check_value(key: str, kind: str, choices: tuple | None, v: Any, source: str) -> Any:
    field = f"axes.{key}"
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": isinstance(v, bool),
        "str": isinstance(v, str),
    }[kind]
    if kind == "int" and isinstance(v, float) and v.is_integer():
        v, ok = int(v), True
    if not ok:
        raise RomsimInputError(field, v, f"must be {kind} values", source)
    if kind == "float":
        v = float(v)
        if not math.isfinite(v):
            raise RomsimInputError(field, v, "must be finite", source)
    if choices is not None and v not in choices:
        raise RomsimInputError(field, v, f"must be one of {', '.join(map(str, choices))}", source)
    return v


def _axis(key: str, raw: Any, kinds: dict, source: str) -> Axis:
    if key not in kinds:
        raise RomsimInputError(
            f"axes.{key}", raw, f"unknown axis key; valid: {', '.join(sorted(kinds))}", source
        )
    kind, choices = kinds[key]
    if isinstance(raw, dict):
        vals = _range_values(key, kind, raw, source)
    elif isinstance(raw, list):
        if not raw:
            raise RomsimInputError(f"axes.{key}", raw, "needs at least one value", source)
        if len(raw) > MAX_AXIS_VALUES:
            raise RomsimInputError(
                f"axes.{key}", f"[{len(raw)} values]", f"at most {MAX_AXIS_VALUES}", source
            )
        vals = [_check_value(key, kind, choices, v, source) for v in raw]
    else:
        vals = [_check_value(key, kind, choices, raw, source)]
    if len(set(vals)) != len(vals):
        raise RomsimInputError(f"axes.{key}", raw, "repeats a value", source)
    return Axis(key, kind, tuple(vals))


def _constraint(i: int, raw: Any, source: str) -> Constraint:
    field = f"constraints[{i}]"
    if not isinstance(raw, dict):
        raise RomsimInputError(field, raw, "must be a table", source)
    if len(raw) == 1 and next(iter(raw)) in BOOL_FIELDS:
        k, v = next(iter(raw.items()))
        if v is not True:
            raise RomsimInputError(f"{field}.{k}", v, "the shorthand is `{k} = true`", source)
        raw = {"field": k, "op": "==", "value": True}
    try:
        c = Constraint.model_validate(raw)
    except ValidationError as e:
        err = from_validation_error(e, source, Constraint)
        raise RomsimInputError(f"{field}.{err.field}", err.value, err.rule, source) from None
    if c.field in BOOL_FIELDS and (c.op != "==" or not isinstance(c.value, bool)):
        raise RomsimInputError(field, raw, f'{c.field} takes `op = "=="`, value true/false', source)
    return c


def _resolve_base(base: str, source: str, spec_dir: Path | None):
    from romsim.config import load_chip, presets

    if base in presets() or spec_dir is None:
        return load_chip(base), base
    p = Path(base)
    if not p.is_absolute() and not p.exists():
        p = spec_dir / p
    try:
        return load_chip(str(p)), str(p)
    except RomsimInputError as e:
        raise RomsimInputError(
            "base", base, e.rule if e.field == "config" else str(e), source
        ) from None


def spec_from_text(text: str, source: str = "<spec>", spec_dir: Path | None = None) -> SweepSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RomsimInputError("spec", source, f"is not valid TOML ({e})") from None
    if "axes" in data and isinstance(data["axes"], dict):
        data["axes"] = _flatten_axes(data["axes"])
    try:
        raw = _SpecFile.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, source, _SpecFile) from None
    if not raw.axes:
        raise RomsimInputError("axes", {}, "needs at least one axis", source)
    base, base_ref = _resolve_base(raw.base, source, spec_dir)
    from romsim.modelspec import load_model

    model = raw.model or base.model
    try:
        load_model(model)
    except RomsimInputError as e:
        raise RomsimInputError("model", model, e.rule, source) from None
    kinds = axis_kinds()
    axes = tuple(_axis(k, v, kinds, source) for k, v in raw.axes.items())
    # Each chip value alone must make a valid chip with the base (combinations are checked per
    # design and counted as invalid).
    for a in axes:
        for v in a.values:
            if a.key == "model":
                try:
                    load_model(v)
                except RomsimInputError as e:
                    raise RomsimInputError("axes.model", v, e.rule, source) from None
            elif a.key not in WORKLOAD_KEYS:
                try:
                    base.with_overrides(**{a.key: v})
                except RomsimInputError as e:
                    raise RomsimInputError(f"axes.{a.key}", v, e.rule, source) from None
    constraints = tuple(_constraint(i, c, source) for i, c in enumerate(raw.constraints))
    objectives = tuple(raw.objectives) or DEFAULT_OBJECTIVES
    if len({o.field for o in objectives}) != len(objectives):
        raise RomsimInputError(
            "objectives", [o.field for o in objectives], "repeat a field", source
        )
    spec = SweepSpec(
        text=text,
        source=source,
        base=base,
        base_ref=base_ref,
        model=model,
        workload=raw.workload,
        axes=axes,
        constraints=constraints,
        objectives=objectives,
        search=raw.search,
        plot=raw.plot,
        description=raw.description,
    )
    if spec.search.method == "grid" and spec.grid_size > MAX_GRID:
        raise RomsimInputError(
            "search.method", "grid", f"{spec.grid_size:.3g} designs: at most {MAX_GRID:.0e}; "
            "use nsga2 or optuna", source,
        )  # fmt: skip
    _check_context(spec)
    return spec


def _check_context(spec: SweepSpec) -> None:
    from romsim.modelspec import load_model

    pa, ga = spec.axis("workload.prompt_len"), spec.axis("workload.gen_len")
    p = max(pa.values) if pa else spec.workload.prompt_len
    g = max(ga.values) if ga else spec.workload.gen_len
    for name in spec.models:
        m = load_model(name)
        if p + g > m.max_position_embeddings:
            raise RomsimInputError(
                "workload", f"{p} + {g}",
                f"prompt + generated tokens must be <= {m.name}'s context of "
                f"{m.max_position_embeddings}", spec.source,
            )  # fmt: skip
    for a in (pa, ga):
        if a and min(a.values) < 1:
            raise RomsimInputError(f"axes.{a.key}", min(a.values), "must be >= 1", spec.source)


def load_spec(path: str) -> SweepSpec:
    from romsim.paths import read_user_text

    text = read_user_text(path, "--spec", "TOML")
    return spec_from_text(text, source=str(path), spec_dir=Path(path).resolve().parent)
