"""GGUF reading: bit-exact blocks, dequantization vs the gguf package, tokenizer, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from functional_fixtures import *  # noqa: F403  (session fixtures)
from romsim.kernels import bitpack as bp
from romsim.kernels.qmatmul import QTensor, dequantize

from romsim.errors import RomsimInputError
from romsim.functional.gguf_io import GGUFError, dequantize_raw, read_gguf

gguf = pytest.importorskip("gguf")


def test_smollm2_hparams_and_types(smollm2_gguf):
    hp = smollm2_gguf.hparams
    assert (hp.n_layers, hp.hidden_size, hp.n_heads, hp.n_kv_heads, hp.head_dim) == (
        30,
        576,
        9,
        3,
        64,
    )
    types = {t.ggml_type for t in smollm2_gguf.tensors.values()}
    assert types == {"Q4_1", "Q8_0", "F32"}


@pytest.mark.parametrize(
    "name", ["blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"]
)
def test_rom_words_bit_exact_and_dequant_matches_gguf(smollm2_gguf, name):
    rt = smollm2_gguf.tensor(name)
    n, k = rt.shape
    qt = QTensor.from_gguf(rt.data, rt.ggml_type.lower(), n, k)
    back = bp.words_to_gguf_blocks(qt.words, qt.meta, qt.kind, n, k)
    assert np.array_equal(back, rt.data.reshape(-1))
    rows = np.arange(0, n, max(1, n // 64))
    assert np.array_equal(dequantize(qt, rows), dequantize_raw(rt)[rows])


def test_tokenizer_roundtrip_and_chat_template(smollm2_tokenizer):
    tk = smollm2_tokenizer
    ids = tk.encode("The capital of France is")
    assert ids == [504, 3575, 282, 4649, 314]
    assert tk.encode("12") == [33, 34]  # smollm pre-tokenizer: one token per digit
    text = "Hello  world!\n\tTabs, digits 2024 and ünïcödé."
    assert tk.decode(tk.encode(text)) == text
    chat = tk.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_start|>assistant\n")
    cids = tk.encode(chat)
    assert cids[0] == 1 and 2 in cids  # <|im_start|>, <|im_end|> as single special tokens


def _write_gguf(path, tensors, arch="llama"):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_context_length(128)
    w.add_layer_norm_rms_eps(1e-5)
    for name, arr, qtype in tensors:
        w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_quant_type_is_one_clear_error(tmp_path):
    p = tmp_path / "iq4nl.gguf"
    # one IQ4_NL block: 32 weights in 18 bytes (Q6_K and the other K-quants load since
    # tests/test_kquant.py)
    arr = np.zeros((1, 18), np.uint8)
    _write_gguf(p, [("blk.0.attn_q.weight", arr, gguf.GGMLQuantizationType.IQ4_NL)])
    with pytest.raises(GGUFError) as ei:
        read_gguf(p)
    msg = str(ei.value)
    assert "\n" not in msg and "blk.0.attn_q.weight" in msg and "IQ4_NL" in msg
    assert isinstance(ei.value, RomsimInputError)


def test_truncated_and_corrupt_files_are_one_clear_error(tmp_path, smollm2_gguf):
    good = tmp_path / "ok.gguf"
    raw = np.zeros((4, 20), np.uint8)  # 4 rows x 32 weights of Q4_1
    _write_gguf(good, [("blk.0.attn_k.weight", raw, gguf.GGMLQuantizationType.Q4_1)])
    assert read_gguf(good).tensor("blk.0.attn_k.weight").shape == (4, 32)
    data = good.read_bytes()
    cases = {
        "trunc_data.gguf": data[:-30],
        "trunc_header.gguf": data[:40],
        "bad_magic.gguf": b"GGUX" + data[4:],
        "garbage.gguf": b"GGUF" + bytes(range(256)) * 2,
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(GGUFError) as ei:
            read_gguf(p)
        assert "\n" not in str(ei.value), name
    with pytest.raises(GGUFError, match="file not found"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="output_norm.weight"):
        read_gguf(good).tensor("output_norm.weight")
