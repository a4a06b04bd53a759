"""Training through the chip's own datapath (``[train] numerics = "chip"``).

The frozen base runs on the chip's numbers, not on float copies of them:

- **Forward of every frozen linear** (q k v o gate up down of each layer and the LM head) is
  :func:`romsim.kernels.qmatmul.qmatmul` on the integer path over the ROM image: the ROM codes
  times block-floating-point activations of ``act_bits`` (one shared exponent per weight group,
  round half to even), dequantized after the integer dot products — bit for bit what
  :class:`romsim.functional.model.FunctionalModel` and the RTL compute.
- **Backward through a frozen linear** (the input gradient ``dX = dY W``): the output gradient
  is rounded to block floating point of ``grad_bits`` (groups of :data:`GRAD_GROUP` along the
  output dimension, the same rounding rule as the activations), then multiplied by the
  dequantized ROM weights — the exact values of the ROM codes, read transposed. The chip's
  L-Unit streams ROM rows; the transposed product is costed by ``romsim.perf.train`` as one more
  pass over the same ROM words. Products and sums of that matmul are fp32 (the H-Unit's
  accumulator), so the gradient format is BFP-``grad_bits`` in, fp32 out.
- **LoRA** (the trainable part, in the H-Unit): the forward reads the adapter in ``lora_format``
  (``fp8``: OCP E4M3 with one power-of-two scale per tensor, amax -> at most 448; ``fp32``:
  unchanged) and its input is the same BFP-``act_bits`` activation the L-Unit sees. The master
  copy that AdamW updates is fp32 (the optimizer state lives in SRAM in fp32, as
  ``romsim.perf.memory`` counts it); gradients pass the rounding straight through.
- **Attention**: K and V are rounded to the KV-cache format (``kv_format``: ``bfp8`` = 8-bit
  mantissas, one exponent per ``kv_group`` values, exactly :class:`~romsim.functional.model.
  KVCache`'s rounding; ``fp16``; ``fp32``) after RoPE, as the cache stores them; Q, softmax and
  the weighted sum stay fp32 (the H-Unit).

Norms, RoPE, SiLU and the loss are fp32 (the vector units). torch is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRAD_GROUP = 32  # (C) values sharing one exponent in the backward's output-gradient BFP
FP8_E4M3_MAX = 448.0  # OCP 8-bit floating point spec (E4M3), largest finite value


@dataclass(frozen=True)
class ChipFormats:
    """The chip's number formats the training path uses (validated by ``TrainSection``)."""

    act_bits: int = 8
    grad_bits: int = 8
    lora_format: str = "fp8"
    kv_format: str = "bfp8"
    kv_group: int = 8


# ---- roundings (numpy; bit-exact with romsim.kernels) ------------------------------------------
def bfp_round(x: np.ndarray, group: int, bits: int) -> np.ndarray:
    """``x[M, K]`` rounded to block floating point (``group`` values per exponent, mantissas of
    ``bits``), returned as fp32 values: the chip's activation quantizer
    (:func:`romsim.kernels.qmatmul.quantize_act_bfp`), zero-padded to a whole group."""
    from romsim.kernels.qmatmul import quantize_act_bfp

    x = np.ascontiguousarray(x, np.float32)
    m, k = x.shape
    kp = -(-k // group) * group
    xp = x if kp == k else np.pad(x, ((0, 0), (0, kp - k)))
    a, e = quantize_act_bfp(xp, group, bits)
    scale = np.ldexp(np.float32(1.0), e).astype(np.float32)
    out = (a.reshape(m, -1, group).astype(np.float32) * scale[:, :, None]).reshape(m, kp)
    return np.ascontiguousarray(out[:, :k])


def _bfp_torch(t, group: int, bits: int):
    import torch

    flat = t.detach().reshape(-1, t.shape[-1]).float().contiguous().numpy()
    return torch.from_numpy(bfp_round(flat, group, bits)).reshape(t.shape).to(t.dtype)


def fp8_round(w):
    """E4M3 rounding with one power-of-two scale per tensor (amax maps to at most 448)."""
    import torch

    amax = float(w.detach().abs().max()) if w.numel() else 0.0
    if amax == 0.0 or not np.isfinite(amax):
        return w
    scale = 2.0 ** np.ceil(np.log2(amax / FP8_E4M3_MAX))
    return (w / scale).to(torch.float8_e4m3fn).to(w.dtype) * scale


# ---- autograd pieces ----------------------------------------------------------------------------
def _ste(fn):
    """A straight-through rounding: forward ``fn(x)``, backward the identity."""
    import torch

    class _STE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return fn(x)

        @staticmethod
        def backward(ctx, g):
            return g

    return _STE.apply


def _chip_matmul_fn():
    import torch

    class ChipMatmul(torch.autograd.Function):
        """``y = x W^T`` on the chip's integer path; ``dX`` as the module docstring says."""

        @staticmethod
        def forward(ctx, x, weight, lin):
            from romsim.kernels.qmatmul import qmatmul

            ctx.lin = lin
            ctx.save_for_backward(weight)
            x2 = x.detach().reshape(-1, x.shape[-1]).float().contiguous().numpy()
            y = qmatmul(lin.qt, x2, "int", lin.act_bits)
            if lin.perm is not None:
                y = y[:, lin.perm]
            return torch.from_numpy(np.ascontiguousarray(y)).reshape(*x.shape[:-1], -1)

        @staticmethod
        def backward(ctx, g):
            (weight,) = ctx.saved_tensors
            lin = ctx.lin
            gq = _bfp_torch(g.contiguous(), GRAD_GROUP, lin.grad_bits)
            gx = gq.reshape(-1, g.shape[-1]) @ weight
            return gx.reshape(*g.shape[:-1], -1), None, None

    return ChipMatmul


_FNS: dict = {}


def _fn(name: str):
    if name not in _FNS:
        _FNS["matmul"] = _chip_matmul_fn()
        _FNS["ste_fp8"] = _ste(fp8_round)
    return _FNS[name]


def make_chip_linear(lin, qt, perm, fmt: ChipFormats):
    """A module with ``lin``'s weight whose forward runs the ROM tensor ``qt`` on the chip's
    integer path (``perm``: ROM row order -> the module's output order, or None)."""
    import torch

    class ChipLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = lin.weight  # dequantized ROM codes: the backward's W (frozen)
            self.bias = None
            self.in_features, self.out_features = lin.in_features, lin.out_features
            self.qt, self.perm = qt, perm
            self.act_bits, self.grad_bits = fmt.act_bits, fmt.grad_bits

        def forward(self, x):
            return _fn("matmul").apply(x, self.weight, self)

        def extra_repr(self) -> str:
            return f"rom={qt.kind}/{qt.bits}b g{qt.group_size}, act_bits={self.act_bits}"

    if lin.bias is not None:
        raise ValueError("chip numerics: a frozen linear with a bias is not supported")
    if (qt.n, qt.k) != (lin.out_features, lin.in_features):
        raise ValueError(f"ROM tensor {qt.n}x{qt.k} does not match the linear {lin}")
    return ChipLinear()


def _kv_attention(fmt: ChipFormats, k_order: np.ndarray | None):
    """Eager attention with K and V rounded to the KV-cache format. ``k_order``: the head_dim
    order the ROM (GGUF) rows give K (interleaved RoPE pairs), in which the cache groups K's
    values; None when the module order is the ROM's."""
    import torch
    from transformers.models.llama.modeling_llama import eager_attention_forward

    back = None if k_order is None else np.argsort(k_order)
    # the straight-through roundings are built once here, not per call (a hot path)
    if fmt.kv_format == "fp32":
        rnd_k = rnd_v = None
    elif fmt.kv_format == "fp16":
        rnd_k = rnd_v = _ste(lambda v: v.to(torch.float16).to(v.dtype))
    else:
        rnd_v = _ste(lambda v: _bfp_torch(v, fmt.kv_group, 8))
        rnd_k = rnd_v
        if k_order is not None:
            rnd_k = _ste(lambda v: _bfp_torch(v[..., k_order], fmt.kv_group, 8)[..., back])

    def rnd(t, f):
        return t if f is None else f(t)

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        return eager_attention_forward(
            module,
            query,
            rnd(key, rnd_k),
            rnd(value, rnd_v),
            attention_mask,
            scaling,
            dropout,
            **kw,
        )

    return attention


# ---- ROM image of the FL base -------------------------------------------------------------------
def rom_for_base(model_cfg, hf_model) -> tuple[dict, dict]:
    """``{hf module path: QTensor}`` and ``{hf module path: row permutation or None}`` for
    every frozen linear of the FL base.

    SmolLM2 (or any GGUF): the GGUF's own blocks, kept bit-exact (Q/K rows permuted back to HF
    order at the output). The tiny test model has float weights: its linears are quantized to
    4-bit affine groups of 32 (Q4_1-like) and the module weights replaced by the dequantized
    codes, so the float and chip paths hold the same frozen weights."""
    import torch

    from romsim.functional.torch_ref import HF_LINEAR
    from romsim.kernels.qmatmul import QTensor, dequantize

    cached = getattr(hf_model, "_romsim_rom", None)
    if cached is not None:  # built once per model: the tiny model's weights are replaced
        return cached
    n_layers = hf_model.config.num_hidden_layers
    qts, perms = {}, {}
    if model_cfg.gguf == "tiny":
        mods = dict(hf_model.named_modules())
        names = [f"model.layers.{i}.{HF_LINEAR[k]}" for i in range(n_layers) for k in HF_LINEAR]
        for nm in [*names, "lm_head"]:
            lin = mods[nm]
            w = lin.weight.detach().float().numpy()
            qt = QTensor.quantize(w, 4, 32)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(dequantize(qt)))
            qts[nm], perms[nm] = qt, None
        hf_model._romsim_rom = (qts, perms)
        return qts, perms
    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path
    from romsim.functional.model import rom_image_from_gguf, unpermute_qk_rows

    path = smollm2_gguf_path() if model_cfg.gguf == "smollm2" else model_cfg.gguf
    g = read_gguf(path)
    rom = rom_image_from_gguf(g)
    hp = g.hparams
    for i in range(n_layers):
        for kind, hf in HF_LINEAR.items():
            qt = rom[f"layers.{i}.{kind}"]
            perm = None
            if kind in ("q", "k"):
                heads = hp.n_heads if kind == "q" else hp.n_kv_heads
                perm = unpermute_qk_rows(np.arange(qt.n)[:, None], heads)[:, 0].copy()
            qts[f"model.layers.{i}.{hf}"], perms[f"model.layers.{i}.{hf}"] = qt, perm
    qts["lm_head"], perms["lm_head"] = rom["lm_head"], None
    hf_model._romsim_rom = (qts, perms)
    return qts, perms


def apply_chip_numerics(peft_model, model_cfg, fmt: ChipFormats) -> int:
    """Turn a peft-wrapped FL base into the chip-numerics model, in place; returns the number
    of frozen linears now on the ROM integer path.

    LoRA A/B are read through ``lora_format`` (a parametrization: the fp32 master copy is
    ``parametrizations.weight.original``) with BFP inputs, K/V through ``kv_format``."""
    import torch
    from torch.nn.utils import parametrize
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    lm = peft_model.base_model.model
    qts, perms = rom_for_base(model_cfg, lm)
    mods = dict(lm.named_modules())

    class _FP8(torch.nn.Module):
        def forward(self, w):
            return _fn("ste_fp8")(w)

    for nm, qt in qts.items():
        parent_name, _, child = nm.rpartition(".")
        parent = mods[parent_name] if parent_name else lm
        mod = mods[nm]
        if hasattr(mod, "base_layer"):  # peft LoRA wrapper: replace its frozen base only
            group = qt.group_size
            mod.base_layer = make_chip_linear(mod.base_layer, qt, perms[nm], fmt)
            bfp_in = _ste(lambda v, g=group: _bfp_torch(v, g, fmt.act_bits))
            for adapter in mod.lora_A:
                a_mod, b_mod = mod.lora_A[adapter], mod.lora_B[adapter]
                a_mod.register_forward_pre_hook(lambda _m, args, f=bfp_in: (f(args[0]),))
                if fmt.lora_format == "fp8":
                    for sub in (a_mod, b_mod):
                        parametrize.register_parametrization(sub, "weight", _FP8())
        else:
            setattr(parent, child, make_chip_linear(mod, qt, perms[nm], fmt))
    impl = f"romsim_chip_kv_{fmt.kv_format}_{fmt.kv_group}"  # one per format: a global registry
    k_order = None
    if perms.get("model.layers.0.self_attn.k_proj") is not None:  # ROM rows in GGUF order
        from romsim.functional.model import unpermute_qk_rows

        hd = lm.config.head_dim
        k_order = np.argsort(unpermute_qk_rows(np.arange(hd)[:, None], 1)[:, 0])
    AttentionInterface.register(impl, _kv_attention(fmt, k_order))
    # without a mask function of its own name transformers builds no (causal) mask at all
    ALL_MASK_ATTENTION_FUNCTIONS.register(impl, eager_mask)
    lm.config._attn_implementation = impl
    for layer in lm.model.layers:
        layer.self_attn.config._attn_implementation = impl
    return len(qts)


__all__ = [
    "ChipFormats",
    "GRAD_GROUP",
    "apply_chip_numerics",
    "bfp_round",
    "fp8_round",
    "make_chip_linear",
    "rom_for_base",
]
