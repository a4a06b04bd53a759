"""Torch reference: transformers' ``LlamaForCausalLM`` with the same weights, dequantized by the
gguf package's own code (independent of romsim.kernels), Q/K rows put back in HF order.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .gguf_io import GGUFModel, dequantize_raw, read_gguf
from .model import LINEAR_GGUF, unpermute_qk_rows

AGREEMENT_TEXT = Path(__file__).with_name("data") / "agreement_text.txt"

# Linear kind -> module path inside a transformers LlamaDecoderLayer (shared with romsim.fl).
HF_LINEAR = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def hf_state_dict(g: GGUFModel) -> dict[str, np.ndarray]:
    """HF-named fp32 weights of a LLaMA GGUF (dequantized with ``gguf.quants``)."""
    hp = g.hparams
    sd: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": dequantize_raw(g.tensor("token_embd.weight")),
        "model.norm.weight": dequantize_raw(g.tensor("output_norm.weight")),
    }
    if "output.weight" in g.tensors:
        sd["lm_head.weight"] = dequantize_raw(g.tensor("output.weight"))
    for i in range(hp.n_layers):
        pre = f"model.layers.{i}."
        for kind, gname in LINEAR_GGUF.items():
            w = dequantize_raw(g.tensor(f"blk.{i}.{gname}.weight"))
            if kind == "q":
                w = unpermute_qk_rows(w, hp.n_heads)
            elif kind == "k":
                w = unpermute_qk_rows(w, hp.n_kv_heads)
            sd[pre + HF_LINEAR[kind] + ".weight"] = w
        sd[pre + "input_layernorm.weight"] = dequantize_raw(g.tensor(f"blk.{i}.attn_norm.weight"))
        sd[pre + "post_attention_layernorm.weight"] = dequantize_raw(
            g.tensor(f"blk.{i}.ffn_norm.weight")
        )
    return sd


def build_torch_reference(gguf, lora_dir: str | None = None):
    """A float32 ``LlamaForCausalLM`` (eager attention) in eval mode, optionally with a PEFT
    LoRA adapter attached."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    g = gguf if isinstance(gguf, GGUFModel) else read_gguf(gguf)
    hp = g.hparams
    tied = "output.weight" not in g.tensors
    cfg = LlamaConfig(
        vocab_size=hp.vocab_size,
        hidden_size=hp.hidden_size,
        intermediate_size=hp.intermediate_size,
        num_hidden_layers=hp.n_layers,
        num_attention_heads=hp.n_heads,
        num_key_value_heads=hp.n_kv_heads,
        head_dim=hp.head_dim,
        rms_norm_eps=hp.rms_eps,
        rope_theta=hp.rope_theta,
        max_position_embeddings=hp.context_length,
        tie_word_embeddings=tied,
        attn_implementation="eager",
        bos_token_id=g.metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=g.metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=g.metadata.get("tokenizer.ggml.padding_token_id"),
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    sd = {
        k: torch.from_numpy(np.require(v, np.float32, ["C", "W"]))
        for k, v in hf_state_dict(g).items()
    }
    if tied:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if tied:
        model.tie_weights()
    # rotary inv_freq is a non-persistent buffer created on meta: rebuild it on CPU
    rot = model.model.rotary_emb
    inv = 1.0 / (
        hp.rope_theta ** (torch.arange(0, hp.head_dim, 2, dtype=torch.float32) / hp.head_dim)
    )
    rot.inv_freq = inv
    if hasattr(rot, "original_inv_freq"):
        rot.original_inv_freq = inv
    model = model.float().eval()
    if lora_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora_dir).eval()
    return model


class _torch_threads:
    """Run torch with ``n`` intra-op threads inside the block (None: leave as is). The tests
    use one thread: small-batch decode gains little from more and loses a lot on shared cores."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


def torch_logits(model, ids, threads: int | None = 1) -> np.ndarray:
    import torch

    with _torch_threads(threads), torch.inference_mode():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()


def torch_greedy(model, ids, n_new: int, threads: int | None = 1) -> list[int]:
    """Greedy decode with the model's KV cache; no EOS stop (every step takes the argmax)."""
    import torch

    out: list[int] = []
    with _torch_threads(threads), torch.inference_mode():
        res = model(torch.tensor([list(ids)], dtype=torch.long), use_cache=True)
        for _ in range(n_new):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            if len(out) == n_new:
                break
            res = model(
                torch.tensor([[tok]], dtype=torch.long),
                past_key_values=res.past_key_values,
                use_cache=True,
            )
    return out
