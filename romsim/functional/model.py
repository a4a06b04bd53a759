"""Functional simulation of a LLaMA model on a ROMA-style chip, through romsim.kernels.

Where things live (as on the chip):
* ROM (a :class:`romsim.rom.RomImage`): every decoder linear layer and the token embedding,
  which is also the (tied) lm_head -- GGUF blocks bit-exact, or re-quantized affine words. The
  embedding lookup decodes one ROM row per token.
* SRAM (:class:`SramBuffer`, a byte array of the configured size): RMSNorm weights (fp32),
  LoRA A/B (fp32), and the KV cache in the configured format (fp32, fp16, or block floating
  point with int8 mantissas and one exponent per ``kv_group`` elements). Activations are
  transient and not charged (the chip has a separate activation SRAM).

Linear layers run on the integer L-Unit datapath (``path="int"``, the hardware's arithmetic) or
the float path (``path="float"``); vector work (norms, RoPE, attention, SiLU) is fp32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError
from romsim.kernels import ops
from romsim.kernels.qmatmul import QTensor, dequantize, qmatmul, quantize_act
from romsim.rom import RomImage

from .gguf_io import GGUFError, GGUFModel, LlamaHParams, read_gguf

LINEAR_GGUF = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}
KV_FORMATS = ("fp32", "fp16", "bfp8")


class SramOverflowError(RomsimInputError):
    """The SRAM cannot hold what the run needs."""


class SramBuffer:
    """A simulated SRAM: one byte array of ``capacity_bytes``; regions are carved in order."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = int(capacity_bytes)
        self._mem = np.zeros(self.capacity_bytes, np.uint8)  # calloc: pages touched on use
        self.used_bytes = 0
        self.regions: dict[str, tuple[int, int]] = {}

    def alloc(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        start = -(-self.used_bytes // 8) * 8
        if start + nbytes > self.capacity_bytes:
            raise SramOverflowError(
                f"sram[{name}]",
                f"{nbytes} bytes",
                f"does not fit: {self.capacity_bytes - start} of {self.capacity_bytes} bytes free",
            )
        self.regions[name] = (start, nbytes)
        self.used_bytes = start + nbytes
        return self._mem[start : start + nbytes].view(dt).reshape(shape)

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes


def permute_qk_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a Q/K projection (llama.cpp convert's ``permute``), so that the
    interleaved-pair RoPE applies. Works on any ``[rows, ...]`` array (weights, LoRA B)."""
    r = w.shape[0]
    return w.reshape(n_head, 2, r // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF row order (inverse of :func:`permute_qk_rows`)."""
    r = w.shape[0]
    return w.reshape(n_head, r // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rom_image_from_gguf(g: GGUFModel, requant: tuple[int, int] | None = None) -> RomImage:
    """ROM image of a GGUF model. Names follow :mod:`romsim.mapping`: ``layers.{i}.{kind}`` and
    ``lm_head`` (tied: the token embedding). ``requant=(bits, group_size)`` re-quantizes the
    decoder linears to the affine format (from the GGUF weights dequantized); otherwise the GGUF
    blocks are kept bit-exact. The lm_head/embedding keeps its GGUF format either way."""
    img = RomImage(name=str(g.metadata.get("general.name") or g.path.stem))
    hp = g.hparams
    for i in range(hp.n_layers):
        for kind, gname in LINEAR_GGUF.items():
            img.add(f"layers.{i}.{kind}", _qtensor(g, f"blk.{i}.{gname}.weight", requant))
    head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
    img.add("lm_head", _qtensor(g, head, None))
    if head != "token_embd.weight":
        img.add("embed", _qtensor(g, "token_embd.weight", None))
    return img


def _qtensor(g: GGUFModel, name: str, requant) -> QTensor:
    rt = g.tensor(name)
    if len(rt.shape) != 2:
        raise GGUFError(
            f"tensor {name} shape", rt.shape, "expected a 2-D matrix", source=str(g.path)
        )
    n, k = rt.shape
    kind = rt.ggml_type.lower()
    if kind in ("f32", "f16"):
        w = np.asarray(rt.data, np.float32).reshape(n, k)
        bits, gs = requant or (8, 128)
        return QTensor.quantize(w, bits, gs)
    qt = QTensor.from_gguf(rt.data, kind, n, k)
    if requant is None:
        return qt
    bits, gs = requant
    return QTensor.quantize(dequantize(qt), bits, gs)


def _check_rom(rom: RomImage, hp: LlamaHParams) -> None:
    want = {f"layers.{i}.{k}" for i in range(hp.n_layers) for k in LINEAR_GGUF} | {"lm_head"}
    missing = sorted(want - set(rom))
    if missing:
        raise RomsimInputError("rom image", missing[0], f"matrix missing ({len(missing)} in all)")
    for i in range(hp.n_layers):
        for kind, (n, k) in _linear_shapes(hp).items():
            qt = rom[f"layers.{i}.{kind}"]
            if (qt.n, qt.k) != (n, k):
                raise RomsimInputError(
                    f"rom image layers.{i}.{kind}",
                    (qt.n, qt.k),
                    f"shape must be {(n, k)} for this model",
                )
    for name in ("lm_head", "embed"):
        if name in rom and (rom[name].n, rom[name].k) != (hp.vocab_size, hp.hidden_size):
            raise RomsimInputError(
                f"rom image {name}",
                (rom[name].n, rom[name].k),
                f"shape must be {(hp.vocab_size, hp.hidden_size)} for this model",
            )


def _linear_shapes(hp: LlamaHParams) -> dict[str, tuple[int, int]]:
    h, f = hp.hidden_size, hp.intermediate_size
    q, kv = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    return {
        "q": (q, h),
        "k": (kv, h),
        "v": (kv, h),
        "o": (h, q),
        "gate": (f, h),
        "up": (f, h),
        "down": (h, f),
    }


@dataclass
class LoraAdapter:
    """LoRA factors per ROM matrix name: ``A[r, K]``, ``B[N, r]`` (already in GGUF row order).
    The path adds ``x @ A.T @ B.T * alpha / rank``."""

    rank: int
    alpha: float
    factors: dict[str, tuple[np.ndarray, np.ndarray]]


# HF module name -> ROM matrix kind
PEFT_TARGETS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}
_ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:\w+\.)*?(\w+)\.lora_([AB])\.(?:\w+\.)?weight$")
_ST_DTYPES: dict[str, tuple[str, int]] = {"F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2)}
_ST_DTYPES["BF16"] = ("<u2", 2)


def read_safetensors(path, field: str = "--lora") -> dict[str, np.ndarray]:
    """The float tensors of a safetensors file as float32 (F64/F32/F16/BF16), every header
    field checked; a corrupt or truncated file is one :class:`RomsimInputError`."""
    import json
    import math

    from romsim.paths import read_user_bytes

    raw = read_user_bytes(path, field)
    src = str(path)

    def bad(what: str, value: object, rule: str) -> RomsimInputError:
        return RomsimInputError(what, value, rule, source=src)

    if len(raw) < 8:
        raise bad("file size", len(raw), "too short for a safetensors header (corrupt)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise bad("header length", n, f"runs past the end of the {len(raw)}-byte file (corrupt)")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("header", f"{n} bytes", "is not JSON (not a safetensors file?)") from None
    if not isinstance(header, dict):
        raise bad("header", type(header).__name__, "must be a JSON object")
    data = memoryview(raw)[8 + n :]
    out: dict[str, np.ndarray] = {}
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b0, b1) = (
                ent["dtype"],
                [int(d) for d in ent["shape"]],
                ent["data_offsets"],
            )
            b0, b1 = int(b0), int(b1)
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name}", "{...}", "needs dtype, shape, data_offsets") from None
        if dtype not in _ST_DTYPES:
            raise bad(f"tensor {name} dtype", dtype, f"supported: {', '.join(_ST_DTYPES)}")
        np_dt, size = _ST_DTYPES[dtype]
        want = math.prod(shape) * size
        if min(shape, default=0) < 0 or not 0 <= b0 <= b1 <= len(data) or b1 - b0 != want:
            raise bad(
                f"tensor {name} data_offsets",
                [b0, b1],
                f"must span {want} bytes inside the {len(data)}-byte data (truncated or corrupt)",
            )
        arr = np.frombuffer(data[b0:b1], dtype=np_dt)
        if dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(np.float32).reshape(shape)
    return out


def _adapter_files(path) -> tuple[Path, Path]:
    """(adapter_config.json, adapter_model.safetensors) of a ``--lora`` folder, or of a folder
    named through one of its two files."""
    p = Path(path)
    if not p.exists():
        raise RomsimInputError("--lora", str(path), "no such folder or file")
    if p.is_file():
        if p.name != _ADAPTER_CONFIG and p.suffix != ".safetensors":
            raise RomsimInputError(
                "--lora",
                str(path),
                f"give the adapter folder ({_ADAPTER_CONFIG} + {_ADAPTER_WEIGHTS})",
            )
        folder = p.parent
        weights = p if p.suffix == ".safetensors" else folder / _ADAPTER_WEIGHTS
    elif p.is_dir():
        folder, weights = p, p / _ADAPTER_WEIGHTS
    else:
        raise RomsimInputError("--lora", str(path), "is neither a folder nor a regular file")
    cfg = folder / _ADAPTER_CONFIG
    if not cfg.exists():
        raise RomsimInputError("--lora", str(folder), f"no {_ADAPTER_CONFIG} in that folder")
    if not weights.exists():
        rule = f"no {_ADAPTER_WEIGHTS} in that folder"
        if (folder / "adapter_model.bin").exists():
            rule += " (adapter_model.bin, a pickle, is not read; save with safetensors)"
        raise RomsimInputError("--lora", str(folder), rule)
    return cfg, weights


def _adapter_config(cfg_p: Path) -> tuple[int, float]:
    """(rank, effective alpha) of a PEFT adapter_config.json; anything other than plain LoRA
    on the seven decoder projections is refused."""
    import json
    import math

    from romsim.paths import read_user_text

    src = str(cfg_p)
    text = read_user_text(cfg_p, "--lora", "JSON")
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise RomsimInputError("json", f"line {e.lineno}", f"invalid JSON ({e.msg})", src) from None
    if not isinstance(cfg, dict):
        raise RomsimInputError("json", type(cfg).__name__, "must be a JSON object", src)
    pt = cfg.get("peft_type")
    if not isinstance(pt, str) or pt.upper() != "LORA":
        raise RomsimInputError("peft_type", pt, "only LoRA adapters ('LORA') are supported", src)
    r = cfg.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise RomsimInputError("r", r, "must be an integer >= 1", src)
    alpha = cfg.get("lora_alpha", r)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise RomsimInputError("lora_alpha", alpha, "must be a finite number", src)
    for key, rule in (
        ("use_dora", "DoRA is not supported"),
        ("fan_in_fan_out", "only fan_in_fan_out = false (nn.Linear layout) is supported"),
        ("lora_bias", "LoRA bias terms are not supported"),
        ("rank_pattern", "per-module ranks are not supported"),
        ("alpha_pattern", "per-module alphas are not supported"),
        ("modules_to_save", "full modules saved with the adapter are not supported"),
    ):
        if cfg.get(key):
            raise RomsimInputError(key, cfg[key], rule, src)
    if cfg.get("bias", "none") != "none":
        raise RomsimInputError("bias", cfg["bias"], "only 'none' is supported", src)
    tm = cfg.get("target_modules")
    if isinstance(tm, list):  # a string is a regex; the tensors are checked below anyway
        unknown = [m for m in tm if str(m).rsplit(".", 1)[-1] not in PEFT_TARGETS]
        if unknown:
            raise RomsimInputError(
                "target_modules", unknown[0], f"this model has only {', '.join(PEFT_TARGETS)}", src
            )
    if cfg.get("use_rslora"):  # scale alpha / sqrt(r) == alpha_eff / r
        alpha = float(alpha) * math.sqrt(r)
    return r, float(alpha)


@dataclass
class PeftAdapterFile:
    """A PEFT LoRA adapter as read from disk, not yet checked against a model."""

    rank: int
    alpha: float  # effective: rsLoRA's alpha / sqrt(r) folded in as alpha * sqrt(r) / r
    tensors: dict[str, np.ndarray]
    source: str  # the safetensors file


def read_peft_adapter(path) -> PeftAdapterFile:
    """Read and check a PEFT LoRA adapter (a folder with adapter_config.json +
    adapter_model.safetensors, or either file of it); needs no model."""
    cfg_p, w_p = _adapter_files(path)
    r, alpha = _adapter_config(cfg_p)
    return PeftAdapterFile(r, alpha, read_safetensors(w_p), str(w_p))


def load_peft_adapter(path, hp: LlamaHParams) -> LoraAdapter:
    """A PEFT LoRA adapter for the model of ``hp`` (:func:`read_peft_adapter` +
    :func:`adapter_for_model`)."""
    return adapter_for_model(read_peft_adapter(path), hp)


def adapter_for_model(f: PeftAdapterFile, hp: LlamaHParams) -> LoraAdapter:
    """Bind an adapter file to the model of ``hp``. Every tensor is checked: name, layer,
    target, shape (``A[r, K]``, ``B[N, r]``), finite values; a bad or foreign adapter is one
    :class:`RomsimInputError` naming the file. Q/K rows of B go into GGUF order."""
    r, alpha, tensors, src = f.rank, f.alpha, f.tensors, f.source
    shapes = _linear_shapes(hp)
    found: dict[tuple[int, str], dict[str, tuple[str, np.ndarray]]] = {}
    for key, arr in tensors.items():
        m = _LORA_KEY.search(key)
        if m is None:
            raise RomsimInputError(
                "tensor", key, "not a LoRA A/B weight of a decoder layer projection", src
            )
        li, mod, ab = int(m.group(1)), m.group(2), m.group(3)
        if mod not in PEFT_TARGETS:
            raise RomsimInputError(
                "tensor", key, f"target {mod!r}: this model has only {', '.join(PEFT_TARGETS)}", src
            )
        if li >= hp.n_layers:
            raise RomsimInputError(
                "tensor", key, f"layer {li}: this model has {hp.n_layers} layers", src
            )
        kind = PEFT_TARGETS[mod]
        n, k = shapes[kind]
        want = (r, k) if ab == "A" else (n, r)
        if arr.shape != want:
            other = arr.shape[1] if ab == "A" else arr.shape[0] if arr.ndim == 2 else None
            mine = k if ab == "A" else n
            if arr.ndim == 2 and other == mine:
                why = f"rank mismatch (adapter_config.json says r = {r})"
            else:
                why = (
                    f"the adapter was made for a different model (this one: hidden "
                    f"{hp.hidden_size}, {hp.n_heads}/{hp.n_kv_heads} heads of {hp.head_dim}, "
                    f"ffn {hp.intermediate_size})"
                )
            raise RomsimInputError(
                f"tensor {key} shape", tuple(arr.shape), f"must be {want}: {why}", src
            )
        if not np.isfinite(arr).all():
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise RomsimInputError(
                f"tensor {key}", f"{bad} non-finite values", "must be finite", src
            )
        slot = found.setdefault((li, kind), {})
        if ab in slot:
            raise RomsimInputError("tensor", key, f"duplicates {slot[ab][0]}", src)
        slot[ab] = (key, arr)
    if not found:
        raise RomsimInputError("tensors", 0, "the file holds no LoRA tensors", src)
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for (li, kind), slot in sorted(found.items()):
        if len(slot) != 2:
            (have,) = slot.values()
            miss = "lora_B" if "A" in slot else "lora_A"
            raise RomsimInputError("tensor", have[0], f"has no matching {miss}", src)
        a, b = slot["A"][1], slot["B"][1]
        if kind == "q":
            b = permute_qk_rows(b, hp.n_heads)
        elif kind == "k":
            b = permute_qk_rows(b, hp.n_kv_heads)
        factors[f"layers.{li}.{kind}"] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    return LoraAdapter(rank=r, alpha=alpha, factors=factors)


ACT_BITS_RANGE = (2, 16)  # romsim.kernels.qmatmul.quantize_act_bfp; the int32 proof covers <= 8
_KV_BYTES = {"fp32": 4.0, "fp16": 2.0}


def kv_bytes_per_token(hp: LlamaHParams, kv_format: str, kv_group: int) -> float:
    """SRAM bytes of one token's K and V over all layers in ``kv_format``."""
    if kv_format not in KV_FORMATS:
        raise RomsimInputError("kv_format", kv_format, f"must be one of {', '.join(KV_FORMATS)}")
    if kv_format == "bfp8" and (kv_group < 1 or hp.head_dim % kv_group):
        raise RomsimInputError("kv_group", kv_group, f"must divide head_dim {hp.head_dim}")
    per = _KV_BYTES.get(kv_format, 1.0 + 1.0 / kv_group)
    return per * hp.n_layers * 2 * hp.n_kv_heads * hp.head_dim


def _aligned(sizes) -> int:
    """Bytes taken by consecutive :meth:`SramBuffer.alloc` regions (8-byte aligned starts)."""
    used = 0
    for nbytes in sizes:
        used = -(-used // 8) * 8 + int(nbytes)
    return used


def sram_fixed_bytes(hp: LlamaHParams, lora: LoraAdapter | None = None) -> int:
    """SRAM bytes of the norms and LoRA factors (fp32), laid out as :class:`FunctionalModel`
    does, before the KV cache."""
    sizes = [4 * hp.hidden_size] * (1 + 2 * hp.n_layers)
    if lora is not None:
        for a, b in lora.factors.values():
            sizes += [4 * a.size, 4 * b.size]
    return _aligned(sizes)


def kv_tokens_fit(free_bytes: int, per_token: float) -> int:
    """Tokens of KV cache that ``free_bytes`` of SRAM hold (with the model's slack)."""
    return int(free_bytes // (per_token + 16))


def check_sram_fit(
    hp: LlamaHParams,
    sram_bytes: int,
    max_tokens: int,
    kv_format: str = "fp32",
    kv_group: int = 8,
    lora: LoraAdapter | None = None,
) -> None:
    """Raise the :class:`SramOverflowError` that :class:`FunctionalModel` would, without
    allocating anything (norms + LoRA + ``max_tokens`` of KV cache in ``sram_bytes``)."""
    per = kv_bytes_per_token(hp, kv_format, kv_group)
    fixed = sram_fixed_bytes(hp, lora)
    if fixed > sram_bytes:
        raise SramOverflowError(
            "sram", f"{fixed} bytes", f"norms + LoRA do not fit in {sram_bytes} bytes of SRAM"
        )
    free = sram_bytes - fixed
    fit = kv_tokens_fit(free, per)
    if max_tokens > fit:
        raise SramOverflowError(
            "max_tokens",
            max_tokens,
            f"KV cache for that many tokens does not fit in SRAM "
            f"({free} bytes free; at most {fit} tokens)",
        )


class KVCache:
    """Per layer K and V ``[n_kv_heads, max_tokens, head_dim]`` held in SRAM in ``fmt``.

    The SRAM region holds the stored format (fp32, fp16 bits, or int8 mantissas + int8
    exponents per ``group`` elements); ``k[l]``/``v[l]`` are fp32 mirrors of the stored values
    (what the attention unit reads after its format decoder) kept for speed."""

    def __init__(
        self, sram: SramBuffer, hp: LlamaHParams, max_tokens: int, fmt: str = "fp32", group: int = 8
    ):
        if fmt not in KV_FORMATS:
            raise RomsimInputError("kv_format", fmt, f"must be one of {', '.join(KV_FORMATS)}")
        if fmt == "bfp8" and hp.head_dim % group:
            raise RomsimInputError("kv_group", group, f"must divide head_dim {hp.head_dim}")
        self.fmt, self.group, self.max_tokens = fmt, group, max_tokens
        shape = (hp.n_layers, 2, hp.n_kv_heads, max_tokens, hp.head_dim)
        if fmt == "fp32":
            self.store = sram.alloc("kv_cache", shape, np.float32)
            self.mirror = self.store
        else:
            if fmt == "fp16":
                self.store = sram.alloc("kv_cache", shape, np.float16)
            else:
                self.store = sram.alloc("kv_cache", shape, np.int8)
                self.exps = sram.alloc("kv_cache_exp", (*shape[:-1], hp.head_dim // group), np.int8)
            self.mirror = np.zeros(shape, np.float32)
        self.bytes = sum(sram.regions[r][1] for r in sram.regions if r.startswith("kv_cache"))

    def write(self, layer: int, which: int, pos0: int, x: np.ndarray) -> None:
        """``x[M, Hkv, hd]`` for positions ``pos0 .. pos0+M-1``."""
        m = x.shape[0]
        if pos0 + m > self.max_tokens:
            raise SramOverflowError(
                "context",
                pos0 + m,
                f"exceeds the KV cache that fits in SRAM ({self.max_tokens} tokens)",
            )
        xt = np.ascontiguousarray(x.transpose(1, 0, 2))  # [Hkv, M, hd]
        if self.fmt == "fp32":
            self.store[layer, which, :, pos0 : pos0 + m] = xt
            return
        if self.fmt == "fp16":
            h = xt.astype(np.float16)
            self.store[layer, which, :, pos0 : pos0 + m] = h
            self.mirror[layer, which, :, pos0 : pos0 + m] = h.astype(np.float32)
            return
        hkv, _, hd = xt.shape
        flat = xt.reshape(-1, self.group)
        from romsim.kernels.qmatmul import quantize_act_bfp

        a, e = quantize_act_bfp(flat.reshape(1, -1), self.group)
        e = np.clip(e, -128, 127)
        self.store[layer, which, :, pos0 : pos0 + m] = a.reshape(hkv, m, hd)
        self.exps[layer, which, :, pos0 : pos0 + m] = e.reshape(hkv, m, hd // self.group)
        deq = a.reshape(-1, self.group).astype(np.float32) * np.ldexp(
            np.float32(1), e.reshape(-1, 1)
        ).astype(np.float32)
        self.mirror[layer, which, :, pos0 : pos0 + m] = deq.reshape(hkv, m, hd)


class FunctionalModel:
    """A LLaMA decoder whose linear weights are read from ROM words by the Numba kernels."""

    def __init__(
        self,
        hp: LlamaHParams,
        rom: RomImage,
        norms: dict[str, np.ndarray],
        sram_bytes: int = 288 << 20,
        max_tokens: int | None = None,
        kv_format: str = "fp32",
        kv_group: int = 8,
        datapath: str = "int",
        act_bits: int = 8,
        lora: LoraAdapter | None = None,
    ):
        if datapath not in ("int", "float"):
            raise RomsimInputError("datapath", datapath, "must be 'int' or 'float'")
        lo, hi = ACT_BITS_RANGE
        if isinstance(act_bits, bool) or not isinstance(act_bits, int) or not lo <= act_bits <= hi:
            raise RomsimInputError("act_bits", act_bits, f"must be an integer in [{lo}, {hi}]")
        per_tok = kv_bytes_per_token(hp, kv_format, kv_group)
        self.hp, self.rom, self.path, self.act_bits = hp, rom, datapath, act_bits
        self.sram = SramBuffer(sram_bytes)
        self.norms = {k: self._sram_copy(f"norm.{k}", v) for k, v in norms.items()}
        self.lora = None
        if lora is not None:
            self.lora = LoraAdapter(
                lora.rank,
                lora.alpha,
                {
                    nm: (self._sram_copy(f"lora.{nm}.A", a), self._sram_copy(f"lora.{nm}.B", b))
                    for nm, (a, b) in lora.factors.items()
                },
            )
        fit = kv_tokens_fit(self.sram.free_bytes, per_tok)
        if max_tokens is None:
            max_tokens = min(hp.context_length, fit)
        if max_tokens < 1 or max_tokens > fit:
            raise SramOverflowError(
                "max_tokens",
                max_tokens,
                f"KV cache for that many tokens does not fit in SRAM "
                f"({self.sram.free_bytes} bytes free; at most {fit} tokens)",
            )
        self.kv = KVCache(self.sram, hp, max_tokens, kv_format, kv_group)
        self.cos, self.sin = ops.rope_tables(hp.head_dim, max_tokens, hp.rope_theta)
        self.pos = 0
        self._act: tuple = (None, 0, None)
        self.embed = rom["embed"] if "embed" in rom else rom["lm_head"]

    def _sram_copy(self, name: str, arr: np.ndarray) -> np.ndarray:
        dst = self.sram.alloc(name, arr.shape, np.float32)
        dst[...] = arr
        return dst

    @classmethod
    def from_gguf(
        cls, gguf, requant: tuple[int, int] | None = None, rom: RomImage | None = None, **kw
    ) -> FunctionalModel:
        """Model from a GGUF file: ROM image built from it (or ``rom``, e.g. one read back with
        :meth:`RomImage.load`), norms into SRAM."""
        g = gguf if isinstance(gguf, GGUFModel) else read_gguf(gguf)
        if rom is None:
            rom = rom_image_from_gguf(g, requant)
        else:
            _check_rom(rom, g.hparams)
        norms = {"output": np.asarray(g.tensor("output_norm.weight").data, np.float32)}
        for i in range(g.hparams.n_layers):
            for nm in ("attn_norm", "ffn_norm"):
                norms[f"{i}.{nm}"] = np.asarray(g.tensor(f"blk.{i}.{nm}.weight").data, np.float32)
        return cls(g.hparams, rom, norms, **kw)

    def reset(self) -> None:
        self.pos = 0

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        qt = self.rom[name]
        act = None
        if self.path == "int":  # one activation quantization per input and group size
            src, g, cached = self._act
            if src is x and g == qt.group_size:
                act = cached
            else:
                act = quantize_act(x, qt.k, qt.group_size, self.act_bits)
                self._act = (x, qt.group_size, act)  # holds x, so its identity stays unique
        y = qmatmul(qt, x, self.path, self.act_bits, act=act)
        if self.lora is not None and name in self.lora.factors:
            a, b = self.lora.factors[name]
            y = y + ops.lora_delta(x, a, b, self.lora.alpha, self.lora.rank)
        return y

    def forward(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Run ``tokens`` at positions ``self.pos ...``; returns logits of the last token (or of
        every token with ``all_logits``) and advances ``self.pos``."""
        hp = self.hp
        ids = np.asarray(tokens, np.int64).reshape(-1)
        m = ids.size
        pos0 = self.pos
        if pos0 + m > self.kv.max_tokens:
            raise SramOverflowError(
                "context",
                pos0 + m,
                f"exceeds the KV cache that fits in SRAM ({self.kv.max_tokens} tokens)",
            )
        if ids.min() < 0 or ids.max() >= self.embed.n:
            raise RomsimInputError("token id", int(ids.max()), f"must be < vocab {self.embed.n}")
        x = dequantize(self.embed, ids)
        positions = np.arange(pos0, pos0 + m, dtype=np.int64)
        kvm = self.kv.mirror
        for i in range(hp.n_layers):
            h = ops.rmsnorm(x, self.norms[f"{i}.attn_norm"], hp.rms_eps)
            q = self._linear(f"layers.{i}.q", h).reshape(m, hp.n_heads, hp.head_dim)
            k = self._linear(f"layers.{i}.k", h).reshape(m, hp.n_kv_heads, hp.head_dim)
            v = self._linear(f"layers.{i}.v", h).reshape(m, hp.n_kv_heads, hp.head_dim)
            ops.rope_interleaved(q, positions, self.cos, self.sin)
            ops.rope_interleaved(k, positions, self.cos, self.sin)
            self.kv.write(i, 0, pos0, k)
            self.kv.write(i, 1, pos0, v)
            att = ops.gqa_attention(q, kvm[i, 0], kvm[i, 1], pos0)
            x = x + self._linear(f"layers.{i}.o", att.reshape(m, -1))
            h = ops.rmsnorm(x, self.norms[f"{i}.ffn_norm"], hp.rms_eps)
            gu = ops.silu_mul(
                self._linear(f"layers.{i}.gate", h), self._linear(f"layers.{i}.up", h)
            )
            x = x + self._linear(f"layers.{i}.down", gu)
        self.pos = pos0 + m
        xf = x if all_logits else x[-1:]
        xf = ops.rmsnorm(np.ascontiguousarray(xf), self.norms["output"], hp.rms_eps)
        logits = qmatmul(self.rom["lm_head"], xf, self.path, self.act_bits)
        return logits if all_logits else logits[0]

    def generate(
        self,
        prompt_ids,
        max_new_tokens: int,
        eos_id: int | None = None,
        top_k: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
        on_token=None,
    ) -> tuple[list[int], dict[str, float]]:
        """Prefill + decode. Returns (new token ids, wall-clock timings in seconds)."""
        import math
        import time

        if max_new_tokens < 1:
            raise RomsimInputError("max_new_tokens", max_new_tokens, "must be >= 1")
        if not math.isfinite(temperature) or temperature < 0:
            raise RomsimInputError("temperature", temperature, "must be a finite number >= 0")
        if seed < 0:
            raise RomsimInputError("seed", seed, "must be >= 0")

        rng = np.random.default_rng(seed)
        self.reset()
        t0 = time.perf_counter()
        logits = self.forward(prompt_ids)
        t1 = time.perf_counter()
        out: list[int] = []
        for step in range(max_new_tokens):
            tok = ops.sample_top_k(logits, top_k, temperature, float(rng.random()))
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if eos_id is not None and tok == eos_id:
                break
            if step + 1 < max_new_tokens:
                logits = self.forward([tok])
        t2 = time.perf_counter()
        n_dec = max(len(out) - 1, 0)
        return out, {
            "prefill_s": t1 - t0,
            "decode_s": t2 - t1,
            "decode_tokens_per_s": n_dec / (t2 - t1) if n_dec and t2 > t1 else 0.0,
        }
