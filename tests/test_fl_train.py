"""Cloze scoring and the training loss, checked against a direct full-sequence computation
with the tiny random LLaMA (no GGUF needed)."""

import numpy as np
import pytest

pytest.importorskip("peft")

from romsim.fl.config import LoraSection, ModelSection  # noqa: E402
from romsim.fl.data import Example, synthetic_dataset  # noqa: E402


@pytest.fixture(scope="module")
def bundle():
    from romsim.fl import train as T

    b = T.load_bundle(ModelSection(gguf="tiny", tiny_layers=2), LoraSection(rank=2), threads=1)
    arrs = T.init_adapter(T.adapter_shapes(b), 0)
    rng = np.random.default_rng(1)  # non-zero B so the adapter takes part
    arrs = {k: v if k.endswith(".A") else 0.05 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in arrs.items()}  # fmt: skip
    T.set_adapter(b, arrs)
    return b


def _direct_logprob(b, prompt: str, cont: str) -> float:
    import torch

    p, c = b.tok.ids(prompt), b.tok.ids(cont)
    x = torch.tensor([p + c])
    with torch.inference_mode():
        logp = b.model(input_ids=x).logits[0].float().log_softmax(-1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))


def test_option_logprobs_match_unpadded_full_sequence(bundle):
    from romsim.fl.train import _option_logprobs

    pairs = [("Definition: x\nWord:", " 7"), ("a much longer prompt\nWord:", " nine ten"),
             ("p:", " q")]  # fmt: skip
    import torch

    with torch.inference_mode():
        lp, n = _option_logprobs(bundle, pairs)
    want = [_direct_logprob(bundle, p, c) for p, c in pairs]
    np.testing.assert_allclose(lp.numpy(), want, rtol=1e-4, atol=1e-4)
    assert n.tolist() == [len(bundle.tok.ids(c)) for _, c in pairs]


def test_evaluate_picks_the_highest_scoring_option_and_reports_answer_nll(bundle):
    from romsim.fl.train import evaluate, predict

    ds = synthetic_dataset(n_train=4, n_test=6, seed=3)
    ev = evaluate(bundle, ds.test, batch=8)  # 2 examples x 4 options per forward
    picks = predict(bundle, ds.test, batch=8)
    correct, nll, ntok = 0, 0.0, 0
    for e, pick in zip(ds.test, picks, strict=True):
        s = [_direct_logprob(bundle, e.prompt, o) for o in e.options]
        assert pick == np.argmax(s)
        correct += int(np.argmax(s) == e.label)
        nll -= s[e.label]
        ntok += len(bundle.tok.ids(e.answer))
    assert ev["accuracy"] == pytest.approx(correct / len(ds.test))
    assert ev["loss"] == pytest.approx(nll / ntok, rel=1e-4)


def test_local_training_lowers_the_answer_loss_on_its_data(bundle):
    from romsim.fl.train import evaluate, get_adapter, local_train, set_adapter

    saved = get_adapter(bundle)
    ds = synthetic_dataset(n_train=16, n_test=4, seed=0)
    before = evaluate(bundle, ds.train)["loss"]
    mods = [(layer, k) for layer in range(bundle.n_layers) for k in bundle.targets]
    local_train(bundle, ds.train, mods, steps=12, batch=8, lr=1e-2, seed=0)
    after = evaluate(bundle, ds.train)["loss"]
    set_adapter(bundle, saved)
    assert after < before


def test_example_rejects_a_label_outside_its_options():
    with pytest.raises(ValueError, match="label 4"):
        Example("p", (" a", " b", " c", " d"), 4, "d")
