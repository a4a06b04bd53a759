"""Local QLoRA fine-tuning and evaluation with torch + peft (imported inside functions).

The frozen base is the ROM image: the SmolLM2-135M Q4_1 GGUF dequantized by
:func:`romsim.functional.torch_ref.build_torch_reference` (float32 copies of exactly the
quantized values, the same bits on every client; :func:`rom_digest` proves it). LoRA adapters
come from peft on every decoder linear of the targets; a client trains only its assigned
modules (``requires_grad`` on those), the others run frozen with the global values.

Adapter arrays travel under canonical keys ``"{layer}.{kind}.A"`` / ``"{layer}.{kind}.B"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from romsim.fl.data import Example
from romsim.functional.torch_ref import HF_LINEAR

_CACHE: dict = {}


class ByteTokenizer:
    """Bytes as tokens (tiny test model only)."""

    vocab_size = 260
    pad_id = 0

    def ids(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class GGUFTextTokenizer:
    def __init__(self, tk):
        self.tk = tk
        self.pad_id = tk.eos_id or 0

    def ids(self, text: str) -> list[int]:
        return self.tk.encode(text)


@dataclass
class Bundle:
    """One process's model: the peft-wrapped frozen base, tokenizer, adapter parameter map."""

    model: object  # peft.PeftModel
    tok: object
    params: dict  # canonical key -> torch.nn.Parameter
    n_layers: int
    targets: tuple[str, ...]
    digest: str


def adapter_key(layer: int, kind: str, ab: str) -> str:
    return f"{layer}.{kind}.{ab}"


def tiny_llama_config(n_layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation="eager",
        pad_token_id=0,
    )


def _build_base(model_cfg):
    import torch

    if model_cfg.gguf == "tiny":
        from transformers import LlamaForCausalLM

        g = torch.Generator().manual_seed(1234)
        cfg = tiny_llama_config(model_cfg.tiny_layers)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            model = LlamaForCausalLM(cfg)
        return model.float().eval(), ByteTokenizer()
    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path
    from romsim.functional.tokenizer import GGUFTokenizer
    from romsim.functional.torch_ref import build_torch_reference

    path = smollm2_gguf_path() if model_cfg.gguf == "smollm2" else model_cfg.gguf
    g = read_gguf(path)
    return build_torch_reference(g), GGUFTextTokenizer(GGUFTokenizer.from_gguf(g))


def rom_digest(model) -> str:
    """SHA-256 over the frozen base's parameters (names, shapes and float32 bytes)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _numerics_key(train_cfg) -> str:
    if train_cfg is None or train_cfg.numerics == "fp32":
        return "fp32"
    if train_cfg.numerics == "nf4-bnb":
        return "nf4-bnb"
    f = train_cfg.chip_formats()
    return f"chip:{f.act_bits}:{f.grad_bits}:{f.lora_format}:{f.kv_format}:{f.kv_group}"


def load_bundle(model_cfg, lora_cfg, threads: int = 2, train_cfg=None) -> Bundle:
    """The process-wide model (built once per process: Ray actors keep theirs between rounds).

    ``train_cfg.numerics`` picks the frozen base's arithmetic: ``fp32`` (float copies of the ROM
    codes), ``chip`` (the chip's datapath, :mod:`romsim.fl.chip_numerics`) or ``nf4-bnb``
    (bitsandbytes NF4 with double quantization under peft, :mod:`romsim.fl.bnb_nf4`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(threads)
    numerics = _numerics_key(train_cfg)
    key = (model_cfg.model_dump_json(), lora_cfg.model_dump_json(), numerics)
    if key in _CACHE:
        return _CACHE[key]
    base, tok = _build_base(model_cfg)
    for p in base.parameters():
        p.requires_grad_(False)
    if numerics == "nf4-bnb":
        from romsim.fl.bnb_nf4 import quantize_base_nf4

        base = quantize_base_nf4(base)
    elif numerics.startswith("chip") and model_cfg.gguf == "tiny":
        # the tiny model's float weights become 4-bit ROM codes first (chip_numerics), so the
        # digest names the frozen weights the chip path really holds
        from romsim.fl.chip_numerics import rom_for_base

        rom_for_base(model_cfg, base)
    digest = rom_digest(base)
    pcfg = LoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=[HF_LINEAR[t].split(".")[1] for t in lora_cfg.targets],
        bias="none",
    )
    model = get_peft_model(base, pcfg)
    if numerics.startswith("chip"):
        from romsim.fl.chip_numerics import apply_chip_numerics

        apply_chip_numerics(model, model_cfg, train_cfg.chip_formats())
    n_layers = base.config.num_hidden_layers
    params = {}
    mods = dict(model.named_modules())

    def master(mod):  # the fp32 master copy (under a parametrization when the chip rounds it)
        if hasattr(mod, "parametrizations"):
            return mod.parametrizations.weight.original
        return mod.weight

    for layer in range(n_layers):
        for kind in lora_cfg.targets:
            m = mods[f"base_model.model.model.layers.{layer}.{HF_LINEAR[kind]}"]
            params[adapter_key(layer, kind, "A")] = master(m.lora_A["default"])
            params[adapter_key(layer, kind, "B")] = master(m.lora_B["default"])
    b = Bundle(model, tok, params, n_layers, tuple(lora_cfg.targets), digest)
    _CACHE.clear()
    _CACHE[key] = b
    return b


def init_adapter(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """peft's default LoRA init in numpy: A ~ U(-1/sqrt(K), 1/sqrt(K)) (kaiming-uniform with
    a = sqrt(5)), B = 0. Seeded, so every run with the same seed starts from the same adapter."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(shapes):
        shp = shapes[k]
        if k.endswith(".A"):
            bound = 1.0 / np.sqrt(shp[1])
            out[k] = rng.uniform(-bound, bound, size=shp).astype(np.float32)
        else:
            out[k] = np.zeros(shp, dtype=np.float32)
    return out


def adapter_shapes(bundle: Bundle) -> dict[str, tuple[int, int]]:
    return {k: tuple(p.shape) for k, p in bundle.params.items()}


def set_adapter(bundle: Bundle, arrays: dict[str, np.ndarray]) -> None:
    import torch

    with torch.no_grad():
        for k, a in arrays.items():
            bundle.params[k].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))


def get_adapter(bundle: Bundle, keys=None) -> dict[str, np.ndarray]:
    keys = bundle.params.keys() if keys is None else keys
    return {k: bundle.params[k].detach().cpu().numpy().copy() for k in keys}


def _option_logprobs(bundle: Bundle, pairs: list[tuple[str, str]]):
    """Summed log-probability of each ``continuation`` given its ``prompt`` (one row per pair)
    and the number of continuation tokens. Prompt and continuation are tokenized apart and
    concatenated, the same way in training and evaluation; right padding; the LM head runs only
    on the positions that predict continuation tokens."""
    import torch

    seqs, spans = [], []
    for prompt, cont in pairs:
        p, c = bundle.tok.ids(prompt), bundle.tok.ids(cont)
        if not p or not c:
            raise ValueError(f"empty prompt or continuation: {prompt!r} / {cont!r}")
        seqs.append(p + c)
        spans.append((len(p), len(c)))
    L = max(map(len, seqs))
    x = torch.full((len(seqs), L), bundle.tok.pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    rows, pos, tgt = [], [], []
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        lp, lc = spans[i]
        rows += [i] * lc
        pos += range(lp - 1, lp + lc - 1)  # position t predicts token t + 1
        tgt += s[lp:]
    rows_t = torch.tensor(rows)
    lm = bundle.model.base_model.model
    h = lm.model(input_ids=x, attention_mask=att).last_hidden_state
    logp = lm.lm_head(h[rows_t, torch.tensor(pos)]).float().log_softmax(-1)
    tok_lp = logp[torch.arange(len(tgt)), torch.tensor(tgt)]
    total = torch.zeros(len(seqs)).index_add(0, rows_t, tok_lp)
    return total, torch.tensor([c for _, c in spans])


def answer_loss(bundle: Bundle, exs: list[Example]):
    """Training loss: mean cross entropy per token of the right answer's continuation (SFT on
    the answer; the prompt is context only)."""
    lp, n = _option_logprobs(bundle, [(e.prompt, e.answer) for e in exs])
    return -lp.sum() / n.sum()


def _score(bundle: Bundle, examples: list[Example], batch: int) -> tuple[np.ndarray, float, int]:
    """Chosen option per example, summed NLL of the right answers and their token count."""
    import torch

    bundle.model.eval()
    choices = np.zeros(len(examples), dtype=np.int64)
    nll, ntok = 0.0, 0
    per = max(len(e.options) for e in examples) if examples else 1
    step = max(1, batch // per)
    with torch.inference_mode():
        for i in range(0, len(examples), step):
            exs = examples[i : i + step]
            pairs = [(e.prompt, o) for e in exs for o in e.options]
            lp, n = _option_logprobs(bundle, pairs)
            j = 0
            for k, e in enumerate(exs):
                scores = lp[j : j + len(e.options)]
                choices[i + k] = int(scores.argmax())
                nll -= float(scores[e.label])
                ntok += int(n[j + e.label])
                j += len(e.options)
    return choices, nll, ntok


def predict(bundle: Bundle, examples: list[Example], batch: int = 32) -> np.ndarray:
    """Index of the option each example's cloze score picks (ties: the first)."""
    return _score(bundle, examples, batch)[0]


def evaluate(bundle: Bundle, examples: list[Example], batch: int = 32) -> dict[str, float]:
    """Cloze accuracy (the option with the highest summed log-probability of its own tokens;
    ties go to the first) and the eval loss: mean cross entropy per token of the right answer.
    ``batch`` counts scored sequences (examples x options)."""
    choices, nll, ntok = _score(bundle, examples, batch)
    labels = np.array([e.label for e in examples], dtype=np.int64)
    return {
        "accuracy": float((choices == labels).mean()) if len(examples) else 0.0,
        "loss": nll / max(1, ntok),
    }


def _trainable(bundle: Bundle, modules) -> list[str]:
    keys = []
    for layer, kind in sorted(modules):
        keys += [adapter_key(layer, kind, "A"), adapter_key(layer, kind, "B")]
    return keys


def batch_order(n: int, steps: int, batch: int, seed: int) -> list[list[int]]:
    """Example indices per step: seeded reshuffles of the local data, cycled."""
    rng = np.random.default_rng(seed)
    out, pool = [], []
    for _ in range(steps):
        b = []
        while len(b) < batch:
            if not pool:
                pool = rng.permutation(n).tolist()
            b.append(pool.pop())
        out.append(b)
    return out


def local_train(
    bundle: Bundle,
    examples: list[Example],
    modules,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """AdamW on the assigned modules' LoRA A/B for ``steps`` steps; the adapter must already
    hold the global values. Returns the trained arrays and the mean training loss."""
    import torch

    keys = _trainable(bundle, modules)
    for p in bundle.params.values():
        p.requires_grad_(False)
    train_params = [bundle.params[k] for k in keys]
    for p in train_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(train_params, lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed)
    bundle.model.train()
    losses = []
    for idx in batch_order(len(examples), steps, batch, seed):
        loss = answer_loss(bundle, [examples[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, max_grad_norm)
        opt.step()
        losses.append(loss.item())
    for p in train_params:
        p.requires_grad_(False)
    bundle.model.eval()
    return get_adapter(bundle, keys), {"train_loss": float(np.mean(losses)) if losses else 0.0}


def unlearn_loss(
    bundle: Bundle,
    examples: list[Example],
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    momentum: float = 0.9,
    max_grad_norm: float = 20.0,
) -> float:
    """MASA's individual unlearning: gradient *ascent* on the answer loss with SGD (momentum
    0.9, grad-norm clip 20, as the official ``agg_masa``) on every LoRA tensor, starting from
    the adapter the bundle holds; returns the sum over epochs of the epoch-mean loss. The
    adapter is left changed: set it again before using the bundle."""
    import torch

    params = list(bundle.params.values())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    bundle.model.eval()  # no dropout; the official code keeps train mode (dropout 0 here)
    n = len(examples)
    steps = max(1, -(-n // batch))
    total = 0.0
    for ep in range(epochs):
        losses = []
        for idx in batch_order(n, steps, min(batch, n), seed + ep):
            loss = answer_loss(bundle, [examples[i] for i in idx])
            opt.zero_grad(set_to_none=True)
            (-loss).backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            losses.append(loss.item())
        total += float(np.mean(losses))
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    return total


def grad_scores(
    bundle: Bundle, examples: list[Example], batches: int, batch: int, seed: int
) -> dict[str, float]:
    """Fisher-information proxy per module ``"{layer}.{kind}"``: the squared norm of the loss
    gradient w.r.t. the module's LoRA A and B, summed over ``batches`` probe batches."""

    for p in bundle.params.values():
        p.requires_grad_(True)
    bundle.model.eval()  # no dropout in the probe
    scores: dict[str, float] = {}
    for idx in batch_order(len(examples), batches, batch, seed):
        loss = answer_loss(bundle, [examples[i] for i in idx])
        bundle.model.zero_grad(set_to_none=True)
        loss.backward()
        for k, p in bundle.params.items():
            mod = k.rsplit(".", 1)[0]
            g = 0.0 if p.grad is None else float(p.grad.pow(2).sum())
            scores[mod] = scores.get(mod, 0.0) + g
    for p in bundle.params.values():
        p.grad = None
        p.requires_grad_(False)
    return scores


def fisher_scores(bundle: Bundle, examples: list[Example]) -> dict[str, float]:
    """FIM-HLA's server-side Fisher score per module ``"{layer}.{kind}"``, as the official
    ``FIMCalculator`` (Fed_HeLLo ``utils/fim_calculator.py``): one backward pass per held-out
    example (eval mode, no dropout) of the score of its true answer, the diagonal Fisher
    ``F_p = mean over examples of grad_p^2`` of every LoRA tensor, and the module score
    ``||F_A||_F + ||F_B||_F`` (a layer's score is the sum over its modules). The official code
    differentiates the classifier's raw logit of the true class; the cloze analogue used here
    is the true answer's summed log-probability (the score the prediction ranks options by),
    which makes F the empirical Fisher of the answer's likelihood. The bundle must hold the
    global adapter."""
    import torch

    params = bundle.params
    for p in params.values():
        p.requires_grad_(True)
    bundle.model.eval()
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    for e in examples:
        lp, _ = _option_logprobs(bundle, [(e.prompt, e.answer)])
        bundle.model.zero_grad(set_to_none=True)
        lp.sum().backward()
        with torch.no_grad():
            for k, p in params.items():
                if p.grad is not None:
                    acc[k] += p.grad.pow(2)
    scores: dict[str, float] = {}
    n = max(1, len(examples))
    for k, f in acc.items():
        mod = k.rsplit(".", 1)[0]
        scores[mod] = scores.get(mod, 0.0) + float(torch.linalg.norm(f / n))
    for p in params.values():
        p.grad = None
        p.requires_grad_(False)
    return scores


def export_peft(bundle: Bundle, arrays: dict[str, np.ndarray], out_dir: str) -> None:
    """Write the adapter in PEFT format (adapter_config.json + adapter_model.safetensors);
    ``peft.PeftModel.from_pretrained(base, out_dir)`` loads it."""
    set_adapter(bundle, arrays)
    sd = bundle.model.state_dict()
    if not any(".parametrizations." in k for k in sd):
        bundle.model.save_pretrained(out_dir)
        return
    # chip numerics: LoRA weights sit under an FP8 parametrization; export the fp32 master
    # copies under peft's own key names (what save_pretrained would write without it)
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k.replace(".default.parametrizations.weight.original", ".weight"): v.detach().contiguous()
        for k, v in get_peft_model_state_dict(bundle.model).items()
    }
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    bundle.model.peft_config["default"].save_pretrained(str(out))
