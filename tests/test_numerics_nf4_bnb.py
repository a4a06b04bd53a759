"""The standard QLoRA base (bitsandbytes NF4 + double quantization, ``romsim.fl.bnb_nf4``) on
the FL layer's tiny LLaMA: bit-exact against bnb's own quantize/dequantize, within the NF4
error bound, float32 forward, LoRA-only training, double quantization really on."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import U32, assert_dot_close

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")
pytest.importorskip("peft")

from romsim.fl.bnb_nf4 import NF4_TARGETS, nf4_stats, quantize_base_nf4  # noqa: E402
from romsim.fl.train import tiny_llama_config  # noqa: E402
from romsim.functional.torch_ref import HF_LINEAR  # noqa: E402

N_LAYERS = 2


def _tiny(seed: int = 7, wide: bool = False):
    """The tiny FL model, seeded, frozen, float32, eval. ``wide``: a 640-wide MLP (640 absmax
    blocks per MLP linear: three second-level blocks, the last partial) with one all-zero
    block in layer 0's gate_proj."""
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(N_LAYERS)
    if wide:
        cfg.intermediate_size = 640
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if wide:
        with torch.no_grad():
            model.model.layers[0].mlp.gate_proj.weight[3, :64] = 0.0
    return model


def _linears(model):
    """(layer, module path, module) for every decoder linear."""
    for i, layer in enumerate(model.model.layers):
        for path in HF_LINEAR.values():
            parent, name = path.split(".")
            yield i, path, getattr(getattr(layer, parent), name)


def _originals(model) -> dict:
    return {(i, p): m.weight.detach().clone() for i, p, m in _linears(model)}


@pytest.fixture(scope="module", params=[False, True], ids=["tiny", "wide"])
def quantized(request):
    model = _tiny(wide=request.param)
    w0 = _originals(model)
    return quantize_base_nf4(model), w0


def _nf4_half_gap() -> float:
    code = F.get_4bit_type("nf4", device="cpu").sort().values
    return float((code[1:] - code[:-1]).max()) / 2


# (a) the stored weights are bnb's, bit for bit, and within the NF4 error bound


def test_nf4_bnb_layers_replaced(quantized):
    model, w0 = quantized
    assert model.is_loaded_in_4bit and not model.training
    for i, path, m in _linears(model):
        assert isinstance(m, bnb.nn.Linear4bit), (i, path, type(m))
        assert m.weight.quant_type == "nf4" and m.weight.blocksize == 64
        assert m.weight.dtype == torch.uint8 and not m.weight.requires_grad
        assert m.compute_dtype == torch.float32 and m.quant_state is m.weight.quant_state
        assert tuple(m.weight.quant_state.shape) == tuple(w0[(i, path)].shape)
    # the recipe leaves embeddings and lm_head (tied here) in float32
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32


def test_nf4_bnb_dequant_bit_exact(quantized):
    model, w0 = quantized
    mods = {(i, p): m for i, p, m in _linears(model)}
    for (i, path), w in w0.items():
        m = mods[(i, path)]
        packed, state = F.quantize_4bit(
            w.clone(), blocksize=64, compress_statistics=True, quant_type="nf4"
        )
        assert torch.equal(m.weight.data, packed), (i, path)
        qs = m.weight.quant_state
        assert torch.equal(qs.absmax, state.absmax) and torch.equal(qs.offset, state.offset)
        assert torch.equal(qs.state2.absmax, state.state2.absmax)
        assert torch.equal(qs.state2.code, state.state2.code)
        got = F.dequantize_4bit(m.weight.data, qs)
        want = F.dequantize_4bit(packed, state)
        assert got.dtype == torch.float32 and got.shape == w.shape
        assert torch.equal(got, want), (i, path, (got - want).abs().max())


def test_nf4_bnb_error_bound(quantized):
    """|w - dq| <= (max NF4 gap / 2) * absmax + |absmax' - absmax| per element: the code is
    the nearest NF4 value to w / absmax (bnb's torch ``bucketize`` against the midpoints, with
    the exact float32 absmax), then scaled by the double-quantized absmax'. And absmax' - offset
    is one of the two 8-bit dynamic-map values around absmax - offset (times the second-level
    absmax): bnb's native CPU blockwise quantizer picks the nearest one except within ~2e-5 of
    a midpoint, so the bound there is one full gap. A few float32 roundings of slack on each."""
    model, w0 = quantized
    half_nf4 = _nf4_half_gap()
    mods = {(i, p): m for i, p, m in _linears(model)}
    tight = 0.0
    for key, w in w0.items():
        qs = mods[key].weight.quant_state
        blocks = w.reshape(-1, 64)
        am = blocks.abs().amax(1)
        am_dq = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        # second level: one float32 absmax per 256 first-level scales
        dyn = qs.state2.code.sort().values
        gap_dyn = float((dyn[1:] - dyn[:-1]).max())
        am2 = qs.state2.absmax.repeat_interleave(256)[: am.numel()]
        slack2 = 4 * U32 * (am2 + qs.offset.abs() + am)
        assert torch.all((am_dq - am).abs() <= gap_dyn * am2 + slack2), key
        dq = F.dequantize_4bit(mods[key].weight.data, qs).reshape(-1, 64)
        err = (dq - blocks).abs()
        tol = half_nf4 * am + (am_dq - am).abs() + 8 * U32 * (am + am_dq.abs())
        worst = float((err - tol[:, None]).max())
        assert worst <= 0, (key, worst)
        nz = am > 0
        tight = max(tight, float((err[nz] / tol[nz, None]).max()))
    assert tight > 0.9, tight  # the bound is tight: some weight comes close to it


def test_nf4_bnb_zero_block_and_determinism():
    """An all-zero block dequantizes to exact zeros; quantizing the same model twice gives
    the same bytes (every client holds the same base)."""
    a, b = quantize_base_nf4(_tiny(wide=True)), quantize_base_nf4(_tiny(wide=True))
    m = a.model.layers[0].mlp.gate_proj
    dq = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
    assert torch.all(dq[3, :64] == 0)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_nf4_bnb_contract():
    model = _tiny()
    rng = torch.random.get_rng_state()
    quantize_base_nf4(model)
    assert torch.equal(rng, torch.random.get_rng_state())  # built on meta: no random draws
    with pytest.raises(ValueError, match="already 4-bit"):
        quantize_base_nf4(model)
    unfrozen = _tiny()
    unfrozen.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        quantize_base_nf4(unfrozen)
    with pytest.raises(ValueError, match="float32"):
        quantize_base_nf4(_tiny().to(torch.bfloat16))


# (b) the forward is float32 x @ dequant(W).T


def _check_layer_forward(m, x, y):
    dq = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
    want = x.detach() @ dq.T
    abs_sum = x.detach().abs() @ dq.abs().T
    assert y.dtype == torch.float32
    assert_dot_close(y.detach().numpy(), want.numpy(), abs_sum.numpy(), k=x.shape[-1])


def test_nf4_bnb_layer_forward(quantized):
    model, _ = quantized
    g = torch.Generator().manual_seed(3)
    for i, path, m in _linears(model):
        x = torch.randn(3, 5, m.in_features, generator=g)
        # training step: MatMul4Bit (autograd) path
        m.train()
        xg = x.clone().requires_grad_(True)
        y = m(xg)
        _check_layer_forward(m, xg, y)
        # inference: eval + inference_mode, where bnb would use its bf16 CPU kernel
        m.eval()
        with torch.inference_mode():
            y = m(x)
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False), (i, path)
        _check_layer_forward(m, x, y)


def test_nf4_bnb_input_grad(quantized):
    model, _ = quantized
    g = torch.Generator().manual_seed(4)
    for _, _, m in _linears(model):
        x = torch.randn(2, 4, m.in_features, generator=g, requires_grad=True)
        go = torch.randn(2, 4, m.out_features, generator=g)
        m(x).backward(go)
        dq = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
        assert_dot_close(
            x.grad.numpy(), (go @ dq).numpy(), (go.abs() @ dq.abs()).numpy(), k=m.out_features
        )
        assert m.weight.grad is None


def test_nf4_bnb_model_equals_dequantized_twin(quantized):
    """The whole NF4 model computes what a float32 model holding dequant(W) computes: bnb's
    float32 path is ``F.linear(x, dequant(W))``, the op ``nn.Linear`` runs, so bit for bit."""
    model, _ = quantized
    twin = _tiny(wide=model.config.intermediate_size == 640)
    with torch.no_grad():
        for (_, _, q), (_, _, t) in zip(_linears(model), _linears(twin), strict=True):
            t.weight.copy_(F.dequantize_4bit(q.weight.data, q.weight.quant_state))
    ids = torch.randint(1, 260, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        a, b = model(input_ids=ids).logits, twin(input_ids=ids).logits
    assert torch.equal(a, b), float((a - b).abs().max())


@pytest.mark.skipif(not F.has_avx512bf16(), reason="bnb's bf16 CPU kernel needs AVX512-BF16")
def test_nf4_bnb_cpu_bf16_kernel_is_what_bnb_would_do():
    """Why quantize_base_nf4 switches it off: left on, an eval forward without autograd
    repacks the weight bytes in place and computes in bfloat16."""
    model = quantize_base_nf4(_tiny(), cpu_bf16_kernel=True)
    m = model.model.layers[0].mlp.up_proj
    dq = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
    x = torch.randn(4, m.in_features, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        y = m(x)
    assert m.weight.quant_state.packing_format_for_cpu
    assert float((y - x @ dq.T).abs().max()) > 1e-4  # bf16 rounding, far above float32


# (c) peft LoRA on top: gradients reach LoRA only, the loss goes down


def test_nf4_bnb_peft_lora_trains_lora_only():
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    base = quantize_base_nf4(_tiny())
    with torch.random.fork_rng():
        torch.manual_seed(11)
        model = get_peft_model(
            base,
            LoraConfig(
                r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(NF4_TARGETS), bias="none"
            ),
        )
    for i, path, m in _linears(model.base_model.model):
        assert isinstance(m, LoraLinear4bit), (i, path, type(m))
        assert isinstance(m.get_base_layer(), bnb.nn.Linear4bit)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(NF4_TARGETS) * N_LAYERS

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    ids = torch.randint(1, 260, (4, 24), generator=torch.Generator().manual_seed(12))
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        frozen_grads = [
            n for n, p in model.named_parameters() if n not in trainable and p.grad is not None
        ]
        assert not frozen_grads, frozen_grads
        assert all(p.grad is not None for p in params)
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0] - 0.05, losses

    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lora_keys = {k for k in before if "lora_" in k}
    assert changed == lora_keys, changed ^ lora_keys
    # the 4-bit base is untouched (codes, absmax, nested stats) and still in bnb's layout
    for _, _, m in _linears(model.base_model.model):
        assert not getattr(m.get_base_layer().weight.quant_state, "packing_format_for_cpu", False)
    assert nf4_stats(model).n_layers == len(NF4_TARGETS) * N_LAYERS


# (d) double quantization is on, and the report says what was done


def test_nf4_bnb_double_quant_on(quantized):
    model, w0 = quantized
    for i, path, m in _linears(model):
        qs = m.weight.quant_state
        assert qs.nested and m.weight.compress_statistics, (i, path)
        assert qs.absmax.dtype == torch.uint8  # first-level scales are 8-bit codes
        assert qs.state2 is not None and qs.state2.blocksize == 256
        assert qs.state2.absmax.dtype == torch.float32
        assert qs.state2.absmax.numel() == -(-qs.absmax.numel() // 256)
        assert qs.offset.numel() == 1 and torch.isfinite(qs.offset)
        # the scales are not bnb's float32 ones: dequantizing them changes them
        plain = w0[(i, path)].reshape(-1, 64).abs().amax(1)
        am_dq = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        assert not torch.equal(am_dq, plain)


def test_nf4_bnb_stats(quantized):
    model, w0 = quantized
    s = nf4_stats(model)
    n_w = sum(w.numel() for w in w0.values())
    blocks = [w.numel() // 64 for w in w0.values()]
    assert s.n_layers == len(NF4_TARGETS) * N_LAYERS and s.n_weights == n_w
    assert s.nested and s.blocksize == 64
    assert s.weight_bytes == n_w // 2
    assert s.absmax_bytes == sum(blocks)  # one uint8 per 64 weights
    assert s.absmax2_bytes == 4 * sum(-(-b // 256) for b in blocks)
    assert s.offset_bytes == 4 * s.n_layers
    assert s.code_bytes == s.n_layers * 4 * (16 + 256)
    assert s.float32_bytes == 4 * n_w
    assert s.unquantized == ("lm_head",)
    assert 4.125 < s.bits_per_weight < 4.2
    d = s.as_dict()
    assert d["total_bytes"] == s.weight_bytes + s.absmax_bytes + s.absmax2_bytes + s.offset_bytes


def test_nf4_bnb_stats_without_double_quant():
    s = nf4_stats(quantize_base_nf4(_tiny(), compress_statistics=False))
    assert not s.nested and s.absmax2_bytes == s.offset_bytes == 0
    assert s.absmax_bytes == 4 * s.n_weights // 64  # float32 scales: 4.5 bits per weight
    assert np.isclose(s.bits_per_weight, 4.5)
