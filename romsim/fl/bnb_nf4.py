"""The standard QLoRA frozen base, from bitsandbytes itself: NF4 + double quantization.

:func:`quantize_base_nf4` swaps every decoder linear of a transformers ``LlamaForCausalLM``
(``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`` of every layer) for a
``bitsandbytes.nn.Linear4bit`` that holds bnb's NF4 codes of the float32 weight, the way
transformers' ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)`` does: a ``Linear4bit``
built on the meta device, its weight a ``Params4bit`` of the original values that bnb quantizes
on ``.to("cpu")``. As in that recipe, the token embeddings and ``lm_head`` (tied to them in
SmolLM2 and in the tiny model) stay float32; so do the RMSNorm weights. peft's
``get_peft_model`` then wraps each replaced layer in ``peft.tuners.lora.bnb.Linear4bit``.

What bitsandbytes 0.50 does on CPU (read from its source, ``bitsandbytes/backends``):

* ``functional.quantize_4bit``: the CPU backend registers no ``quantize_4bit`` kernel, so the
  ``default`` one runs, in plain torch: per block of 64 (row-major over the flattened weight),
  ``absmax`` = max |w| in float32, ``w / absmax`` clamped to [-1, 1], code = ``bucketize``
  against the midpoints of the 16-entry NF4 table, two codes per byte (first in the high
  nibble).
* double quantization (``compress_statistics=True``): ``offset = absmax.mean()``, then
  ``quantize_blockwise(absmax - offset, blocksize=256)`` with bnb's 8-bit dynamic map, run by
  the native ``libbitsandbytes_cpu`` (``cquantize_blockwise_cpu_fp32``). The ``QuantState``
  keeps uint8 ``absmax``, ``offset`` and ``state2`` (float32 second-level absmax per 256 first-
  level scales, the 256-entry dynamic code); ``nested`` is True.
* ``functional.dequantize_4bit``: ``dequantize_blockwise`` of the absmax (native) + offset,
  then the native ``cdequantize_blockwise_cpu_nf4_fp32``: ``NF4[code] * absmax`` in float32.
* ``Linear4bit.forward`` -> ``matmul_4bit``: with autograd (a training step) ``MatMul4Bit``,
  whose forward is the ``default`` ``gemm_4bit`` (dequantize as above, then
  ``torch.nn.functional.linear`` in the input's dtype) and whose backward is
  ``grad @ dequantized W`` (no gradient to the 4-bit weight). Without autograd the same
  ``gemm_4bit`` runs, *except* on a CPU with AVX512-BF16 in eval mode: there bnb repacks
  ``weight.data`` in place into a blocked CPU layout (``packing_format_for_cpu``) and runs a
  bfloat16 GEMV (input and absmax cast to bf16), whatever ``compute_dtype`` says. That is not
  the float32 compute of this recipe, differs from the float32 product by bf16 rounding and
  changes the stored weight bytes, so :func:`quantize_base_nf4` turns it off by default
  (``Linear4bit.support_avx512bf16_for_cpu = False``): then every forward is float32
  ``x @ dequantize_4bit(W).T``, the same on every CPU.

torch and bitsandbytes are imported inside functions only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from romsim.functional.torch_ref import HF_LINEAR

NF4_BLOCKSIZE = 64
# bitsandbytes' double quantization groups 256 first-level absmax values (fixed in bnb).
NF4_NESTED_BLOCKSIZE = 256
# Module names (inside each decoder layer) that get replaced; also the LoRA target names.
NF4_TARGETS: tuple[str, ...] = tuple(p.split(".")[1] for p in HF_LINEAR.values())


@dataclass(frozen=True)
class NF4Stats:
    """What :func:`quantize_base_nf4` left in a model (all sizes in bytes, as stored by bnb).

    ``weight_bytes``: packed 4-bit codes (two per byte). ``absmax_bytes``: first-level scales
    (uint8 when double-quantized, float32 otherwise). ``absmax2_bytes`` + ``offset_bytes``: the
    double quantization's float32 second-level absmax (one per 256 scales) and per-layer mean.
    ``code_bytes``: the lookup tables each ``QuantState`` carries (16 NF4 + 256 dynamic-map
    float32 values per layer; constants, the same in every layer). ``float32_bytes``: what the
    replaced weights took before. ``unquantized``: names of the Linear modules left float32."""

    n_layers: int
    n_weights: int
    weight_bytes: int
    absmax_bytes: int
    absmax2_bytes: int
    offset_bytes: int
    code_bytes: int
    float32_bytes: int
    nested: bool
    blocksize: int
    unquantized: tuple[str, ...]

    @property
    def stats_bytes(self) -> int:
        """Per-block statistics (absmax, second-level absmax, offsets), without code tables."""
        return self.absmax_bytes + self.absmax2_bytes + self.offset_bytes

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.stats_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / max(1, self.n_weights)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["unquantized"] = list(self.unquantized)
        d.update(
            stats_bytes=self.stats_bytes,
            total_bytes=self.total_bytes,
            bits_per_weight=self.bits_per_weight,
        )
        return d


def quantize_base_nf4(
    model,
    *,
    targets: tuple[str, ...] = NF4_TARGETS,
    blocksize: int = NF4_BLOCKSIZE,
    compress_statistics: bool = True,
    cpu_bf16_kernel: bool = False,
):
    """Replace the decoder linears of ``model`` by bitsandbytes NF4 ``Linear4bit`` layers.

    Input: a float32 transformers ``LlamaForCausalLM`` (what ``romsim.fl.train._build_base``
    returns) on CPU whose parameters are all frozen (``requires_grad=False``); not yet wrapped
    by peft. Output: the same object, changed in place: ``model.model.layers[i].<attn|mlp>.<t>``
    for every layer ``i`` and every ``t`` in ``targets`` is a ``bitsandbytes.nn.Linear4bit``
    (``quant_type="nf4"``, ``blocksize``, ``compress_statistics`` = double quantization,
    ``compute_dtype=torch.float32``) whose ``weight`` is a frozen ``Params4bit`` of bnb's NF4
    codes of the original weight (``weight.quant_state`` holds the statistics); embeddings,
    ``lm_head`` and norms are untouched float32. ``model.is_loaded_in_4bit`` is set to True,
    as transformers does, which is what makes ``peft.get_peft_model`` use its bnb LoRA layer.
    The model is returned in eval mode. Quantization is deterministic and draws no random
    numbers (the new modules are built on the meta device).

    ``cpu_bf16_kernel=False`` (default) keeps bnb's bfloat16 AVX512 inference kernel off, so
    every forward computes in float32 (see the module docstring); True leaves bnb's default.

    ``model.float()`` afterwards is harmless (``nn.Module`` casts floating-point tensors only,
    and the codes are uint8); calling ``Params4bit.to(dtype)`` on a weight directly is not.
    Do not merge the adapter (peft's ``merge`` / ``merge_and_unload``): peft re-quantizes
    ``dequant(W) + B A`` to NF4, a new (lossy) base that is no longer the ROM.
    :func:`nf4_stats` reports what was done.
    """
    import bitsandbytes as bnb
    import torch

    if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(
            f"bitsandbytes 4-bit blocksize must be a power of two 32..4096: {blocksize}"
        )
    unknown = set(targets) - set(NF4_TARGETS)
    if unknown:
        raise ValueError(f"unknown target modules {sorted(unknown)}; known: {NF4_TARGETS}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"the base must be frozen; requires_grad on {trainable[:3]}...")
    layers = model.model.layers
    for i, layer in enumerate(layers):
        for path in HF_LINEAR.values():
            parent_name, name = path.split(".")
            if name not in targets:
                continue
            parent = getattr(layer, parent_name)
            lin = getattr(parent, name)
            if isinstance(lin, bnb.nn.Linear4bit):
                raise ValueError(f"layer {i} {path} is already 4-bit")
            if type(lin) is not torch.nn.Linear:
                raise TypeError(f"layer {i} {path}: expected torch.nn.Linear, got {type(lin)}")
            w = lin.weight.detach()
            if w.dtype != torch.float32 or w.device.type != "cpu":
                raise ValueError(
                    f"layer {i} {path}: need a float32 CPU weight ({w.dtype}, {w.device})"
                )
            with torch.device("meta"):
                new = bnb.nn.Linear4bit(
                    lin.in_features,
                    lin.out_features,
                    bias=lin.bias is not None,
                    compute_dtype=torch.float32,
                    compress_statistics=compress_statistics,
                    quant_type="nf4",
                    quant_storage=torch.uint8,
                )
            new.weight = bnb.nn.Params4bit(
                w.contiguous().clone(),
                requires_grad=False,
                blocksize=blocksize,
                compress_statistics=compress_statistics,
                quant_type="nf4",
                quant_storage=torch.uint8,
                module=new,
            ).to("cpu")  # bnb quantizes here (Params4bit._quantize -> quantize_4bit)
            if lin.bias is not None:
                new.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
            if not cpu_bf16_kernel:
                new.support_avx512bf16_for_cpu = False
            setattr(parent, name, new)
    model.is_loaded_in_4bit = True
    return model.eval()


def nf4_stats(model) -> NF4Stats:
    """Count the bnb ``Linear4bit`` layers in ``model`` (a quantized base, or the peft model
    around it) and the bytes of their NF4 codes and statistics; see :class:`NF4Stats`."""
    import bitsandbytes as bnb
    import torch

    n = n_w = wb = ab = a2b = ob = cb = 0
    nested, blocks = set(), set()
    unquantized = []
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            if getattr(qs, "packing_format_for_cpu", False):
                raise ValueError(f"{name}: weight repacked by bnb's CPU bf16 kernel")
            n += 1
            n_w += int(torch.Size(qs.shape).numel())
            wb += m.weight.data.numel() * m.weight.data.element_size()
            ab += qs.absmax.numel() * qs.absmax.element_size()
            cb += qs.code.numel() * qs.code.element_size()
            if qs.nested:
                a2b += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
                ob += torch.as_tensor(qs.offset).numel() * 4
                cb += qs.state2.code.numel() * qs.state2.code.element_size()
            nested.add(bool(qs.nested))
            blocks.add(int(qs.blocksize))
        elif type(m) is torch.nn.Linear and not name.endswith(("lora_A.default", "lora_B.default")):
            unquantized.append(name)
    if len(nested) > 1 or len(blocks) > 1:
        raise ValueError(f"mixed 4-bit settings: nested {nested}, blocksize {blocks}")
    return NF4Stats(
        n_layers=n,
        n_weights=n_w,
        weight_bytes=wb,
        absmax_bytes=ab,
        absmax2_bytes=a2b,
        offset_bytes=ob,
        code_bytes=cb,
        float32_bytes=4 * n_w,
        nested=bool(nested and nested.pop()),
        blocksize=blocks.pop() if blocks else 0,
        unquantized=tuple(unquantized),
    )
