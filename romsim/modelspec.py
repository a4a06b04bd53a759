"""LLaMA-family model shapes read from HF-style ``config.json`` files (shapes only, no weights).

Shipped specs live in the top-level ``models/`` folder (installed as ``romsim.models``); any other
LLaMA-style ``config.json`` can be given by path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from romsim.errors import RomsimInputError
from romsim.paths import read_user_text

# Linear layers of one decoder block, in execution order.
LINEAR_KINDS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
ATTN_KINDS = frozenset({"q", "k", "v", "o"})
MLP_KINDS = frozenset({"gate", "up", "down"})

_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
_LLAMA_TYPES = {"llama", "mistral", "qwen2", "smollm", "smollm2"}

# Upper bounds on model shapes: generous multiples of the largest published LLaMA-family models
# (LLaMA-3.1-405B: 126 layers, hidden 16384, FFN 53248, 128 heads; Gemma's 256k vocabulary;
# LLaMA-4 Scout's 10M-token context). They keep a typo (10**6 layers, a 10**12 vocabulary) from
# turning into hours of work or an allocation larger than the machine.
SHAPE_LIMITS: dict[str, int] = {
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 24,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 131072

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def linear_shape(self, kind: str) -> tuple[int, int]:
        """(out_features N, in_features K) of one decoder linear layer."""
        h, i = self.hidden_size, self.intermediate_size
        shapes = {
            "q": (self.q_dim, h),
            "k": (self.kv_dim, h),
            "v": (self.kv_dim, h),
            "o": (h, self.q_dim),
            "gate": (i, h),
            "up": (i, h),
            "down": (h, i),
        }
        return shapes[kind]

    @property
    def linear_params_per_layer(self) -> int:
        return sum(n * k for n, k in (self.linear_shape(t) for t in LINEAR_KINDS))

    @property
    def decoder_linear_params(self) -> int:
        return self.n_layers * self.linear_params_per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of a separate lm_head (0 when tied to the embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        return self.n_layers * 2 * self.hidden_size + self.hidden_size

    @property
    def n_params(self) -> int:
        """Total parameters as published (embedding counted once when tied)."""
        return (
            self.decoder_linear_params
            + self.embedding_params
            + self.lm_head_params
            + self.norm_params
        )

    def kv_elems_per_token(self) -> int:
        """K and V elements cached per token over all layers."""
        return 2 * self.n_layers * self.kv_dim


def shipped_models() -> dict[str, Path]:
    root = resources.files("romsim.models")
    out: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[: -len(".json")]] = Path(str(entry))
    return dict(sorted(out.items()))


def _int_field(cfg: dict, key: str, source: str, minimum: int = 1) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RomsimInputError(key, v, "must be an integer", source)
    if v < minimum:
        raise RomsimInputError(key, v, f"must be >= {minimum}", source)
    limit = SHAPE_LIMITS.get(key)
    if limit is not None and v > limit:
        raise RomsimInputError(
            key, v, f"must be <= {limit} (far beyond any published LLaMA-family model)", source
        )
    return v


def _bool_field(cfg: dict, key: str, source: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise RomsimInputError(key, v, "must be true or false (a JSON boolean)", source)
    return v


def spec_from_config(cfg: dict, name: str, source: str = "config.json") -> ModelSpec:
    mtype = cfg.get("model_type", "llama")
    if mtype not in _LLAMA_TYPES:
        raise RomsimInputError(
            "model_type",
            mtype,
            f"must be a LLaMA-style model ({', '.join(sorted(_LLAMA_TYPES))})",
            source,
        )
    for key in _REQUIRED:
        if key not in cfg:
            raise RomsimInputError(key, None, "is required in a LLaMA config.json", source)
    h = _int_field(cfg, "hidden_size", source)
    n_heads = _int_field(cfg, "num_attention_heads", source)
    n_kv = (
        _int_field(cfg, "num_key_value_heads", source) if "num_key_value_heads" in cfg else n_heads
    )
    if n_heads % n_kv:
        raise RomsimInputError(
            "num_key_value_heads", n_kv, f"must divide num_attention_heads ({n_heads})", source
        )
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = _int_field(cfg, "head_dim", source)
    else:
        if h % n_heads:
            raise RomsimInputError(
                "hidden_size", h, f"must be a multiple of num_attention_heads ({n_heads})", source
            )
        head_dim = h // n_heads
    return ModelSpec(
        name=name,
        hidden_size=h,
        intermediate_size=_int_field(cfg, "intermediate_size", source),
        n_layers=_int_field(cfg, "num_hidden_layers", source),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=_int_field(cfg, "vocab_size", source),
        tie_word_embeddings=_bool_field(cfg, "tie_word_embeddings", source, False),
        max_position_embeddings=(
            _int_field(cfg, "max_position_embeddings", source)
            if cfg.get("max_position_embeddings") is not None
            else 131072
        ),
    )


def load_model(name_or_path: str) -> ModelSpec:
    """A shipped model by name (``llama-3.2-3b``) or any LLaMA-style config.json by path."""
    shipped = shipped_models()
    if name_or_path in shipped:
        path = shipped[name_or_path]
        name = name_or_path
    else:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise RomsimInputError(
                "model",
                name_or_path,
                f"is neither a shipped model ({', '.join(shipped)}) nor a file",
            )
        name = path.parent.name if path.name == "config.json" else path.stem
    try:
        cfg = json.loads(read_user_text(path, "model", "JSON"))
    except json.JSONDecodeError as e:
        raise RomsimInputError(
            "model", str(path), f"is not valid JSON ({e.msg} at line {e.lineno})"
        ) from None
    if not isinstance(cfg, dict):
        raise RomsimInputError("model", str(path), "must hold a JSON object")
    return spec_from_config(cfg, name, source=str(path))
