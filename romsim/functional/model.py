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

from dataclasses import dataclass

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
    """LoRA factors per ROM matrix name: ``A[r, K]``, ``B[N, r]`` (already in GGUF row order)."""

    rank: int
    alpha: float
    factors: dict[str, tuple[np.ndarray, np.ndarray]]


def load_peft_adapter(path, hp: LlamaHParams) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""
    import json
    from pathlib import Path

    from safetensors.numpy import load_file

    p = Path(path)
    cfg_p = p / "adapter_config.json"
    if not cfg_p.is_file():
        raise RomsimInputError("lora", str(p), "no adapter_config.json in that folder")
    cfg = json.loads(cfg_p.read_text())
    r = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", r))
    files = [p / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise RomsimInputError("lora", str(p), "no adapter_model.safetensors in that folder")
    tensors = load_file(str(files[0]))
    hf = {
        "q_proj": "q",
        "k_proj": "k",
        "v_proj": "v",
        "o_proj": "o",
        "gate_proj": "gate",
        "up_proj": "up",
        "down_proj": "down",
    }
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        parts = key.split(".")
        try:
            li = int(parts[parts.index("layers") + 1])
        except (ValueError, IndexError):
            raise RomsimInputError("lora tensor", key, "cannot find the layer index") from None
        mod = next((m for m in hf if f".{m}." in key), None)
        if mod is None:
            raise RomsimInputError("lora tensor", key, f"target must be one of {', '.join(hf)}")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        kind = hf[mod]
        if kind == "q":
            b = permute_qk_rows(b, hp.n_heads)
        elif kind == "k":
            b = permute_qk_rows(b, hp.n_kv_heads)
        factors[f"layers.{li}.{kind}"] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    return LoraAdapter(rank=r, alpha=alpha, factors=factors)


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
        per_tok = {"fp32": 4.0, "fp16": 2.0, "bfp8": 1.0 + 1.0 / kv_group}[kv_format]
        per_tok *= hp.n_layers * 2 * hp.n_kv_heads * hp.head_dim
        fit = int(self.sram.free_bytes // (per_tok + 16))
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
        import time

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
