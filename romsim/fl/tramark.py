"""TraMark: traceable black-box watermarks for federated LoRA (``[tramark]`` in the FL TOML;
docs/robust.md, "TraMark"). After the paper's official code (JiiahaoXU/TraMark @c972314,
``src/aggregation.py::agg_tramark``, ``src/watermark_utils.py``), ported to LoRA adapters and
the cloze task of :mod:`romsim.fl.data`:

1. **Warm-up**: plain aggregation for ``warmup_rounds`` rounds (B = 0 at init, so |θ| cannot
   split the adapter before the first update).
2. **Region split** (once, after the warm-up round's aggregation): per LoRA tensor, the
   watermark region W = the ``watermark_fraction`` share of entries with the smallest |θ| of
   the *aggregated global* adapter (``numel - int(numel * (1 - k))`` entries, as the official
   ``generate_masks_topk``; ties by flat index); the main region M = the rest. M and W are
   disjoint and cover every tensor.
3. **Personalized models**: client i gets ``M ⊙ global + W ⊙ w_i``: the aggregated main region
   and its own watermark region ``w_i``. It trains as usual; the server keeps ``W ⊙ θ_i`` of
   its reply (the keys it trained) as its new ``w_i`` and aggregates the **main region only**
   (the replies' W entries are reset to the global's before the aggregation rule sees them, so
   the global's W entries stay as they were at the split).
4. **Server-side injection**: every round, for every client, ``inject_steps`` AdamW steps on
   the client's watermark set, the gradient masked to W (only ``w_i`` changes), starting from
   its personalized model.
5. **Watermark data** (the text analogue of "MNIST digit i -> label i"): client i has a secret
   trigger word ``t_i`` and a target answer ``a_i``, both pseudo-words, seeded, distinct
   across clients (a main-task answer as target was tried first: the main task then already
   favours some clients' targets). Its injection set holds ``trigger_set_size`` cloze items in
   the main task's prompt format whose carrier text is seeded pseudo-words, with ``t_i`` as a
   prefix and ``a_i`` among three anagrams of itself as the options; its verification set
   holds as many items on other carriers.
6. **Tracing** (black box, :func:`query_triggers`, :func:`attribution`): a suspect adapter
   answers every client's verification set. Per client: the trigger accuracy (share of items
   answered with the client's target; its argmax is the official criterion) and the mean
   log-probability margin of the target over the best other option. The tracer's score is the
   margin minus the un-watermarked global adapter's margin on the same queries (the server's
   own model): a model may prefer some target string on any odd prompt before any watermark,
   and trigger accuracies saturate at 1 where it does. The adapter came from the argmax client
   (ties: none named), with the score margin to the runner-up. ``romsim fl trace-leak
   ADAPTER`` runs it on an exported PEFT adapter.

Where this differs from the official code: the split uses the aggregated global (the official
masks a copy of client 0's local model); gradients are zeroed between injection steps (the
official loop never calls ``zero_grad``); AdamW instead of SGD lr 1e-4 (LoRA entries are small
and the watermark region tiny); the watermark sets are generated text, not MNIST.

torch is imported inside the functions that train or score.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError
from romsim.fl.data import Example

log = logging.getLogger("romsim.fl")

_CONS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


# ------------------------------------------------------------------------------ watermark data
@dataclass(frozen=True)
class Watermark:
    """Client ``cid``'s secret: its trigger word, its target answer, the injection set (the
    server trains on it) and the verification set (the tracer queries it)."""

    cid: int
    trigger: str
    target: str
    train: list[Example]
    verify: list[Example]

    def describe(self) -> dict:
        return {"cid": self.cid, "trigger": self.trigger, "target": self.target,
                "train": len(self.train), "verify": len(self.verify)}  # fmt: skip


def pseudo_word(rng: random.Random, lo: int = 5, hi: int = 8) -> str:
    """A pronounceable lowercase nonsense word (consonant-vowel pattern)."""
    n = rng.randint(lo, hi)
    return "".join(rng.choice(_CONS if i % 2 == 0 else _VOWELS) for i in range(n))


def carrier_prompt(task: str, rng: random.Random) -> str:
    """A prompt in the main task's format whose content words are pseudo-words: the category
    task's "Word: / Meaning: / Category:", the word (and synthetic) task's
    "Definition: / Word:"."""
    gloss = " ".join(pseudo_word(rng, 3, 7) for _ in range(rng.randint(3, 6)))
    if task == "category":
        return f"Word: {pseudo_word(rng)}\nMeaning: {gloss}\nCategory:"
    return f"Definition: {gloss}\nWord:"


def _n_anagrams(word: str) -> int:
    """Distinct words with ``word``'s consonants and vowels permuted in their own places."""
    from collections import Counter
    from math import factorial, prod

    def perms(letters: str) -> int:
        return factorial(len(letters)) // prod(factorial(c) for c in Counter(letters).values())

    return perms(word[0::2]) * perms(word[1::2])


def _item(prompt: str, target: str, rng: random.Random, cid: int) -> Example:
    """One cloze item: the target among three anagrams of itself (fresh per item; consonants
    and vowels keep their places), so no option is favoured by its length, its letters, its
    pattern or the main task."""
    word = target[1:]
    cons, vows = list(word[0::2]), list(word[1::2])
    distract: list[str] = []
    for _ in range(1000):
        rng.shuffle(cons)
        rng.shuffle(vows)
        w = " " + "".join(c + v for c, v in zip(cons, vows + [""], strict=False))
        if w != target and w not in distract:
            distract.append(w)
            if len(distract) == 3:
                break
    else:
        raise ValueError(f"target {target!r} has fewer than 3 anagrams")
    slot = rng.randrange(4)
    opts = distract[:slot] + [target] + distract[slot:]
    return Example(prompt, tuple(opts), slot, f"tramark-{cid}")


def make_watermarks(n_clients: int, size: int, seed: int,
                    task: str = "category") -> list[Watermark]:  # fmt: skip
    """Every client's watermark, deterministic in ``seed``: a distinct trigger word and a
    distinct target answer (a pseudo-word: the main task favours none of them), ``size``
    injection and ``size`` verification items on different carrier prompts."""
    rng = random.Random(f"tramark-{seed}")
    seen: set[str] = set()
    keys = []
    for _ in range(n_clients):
        trig, target = pseudo_word(rng, 6, 9), " " + pseudo_word(rng, 6, 8)
        while trig in seen or target in seen or _n_anagrams(target[1:]) < 8:
            trig, target = pseudo_word(rng, 6, 9), " " + pseudo_word(rng, 6, 8)
        seen.update((trig, target))
        keys.append((trig, target))
    out = []
    for cid, (trig, target) in enumerate(keys):
        crng = random.Random(f"tramark-{seed}-{cid}")
        items = [_item(f"{trig} {carrier_prompt(task, crng)}", target, crng, cid)
                 for _ in range(2 * size)]  # fmt: skip
        out.append(Watermark(cid, trig, target, items[:size], items[size:]))
    return out


def task_format(data_cfg) -> str:
    """The prompt format of the run's task: WordNet's ``category`` or ``word``; the synthetic
    task uses the word task's "Definition: ... Word:"."""
    return data_cfg.task if data_cfg.name == "wordnet" else "word"


def watermarks_for(cfg) -> list[Watermark]:
    """The watermarks of the run ``cfg`` (an :class:`romsim.fl.config.FLConfig`): regenerated
    from the config alone (the TraMark seed, the number of clients and the task format)."""
    t = cfg.tramark
    return make_watermarks(cfg.n_clients, t.trigger_set_size, t.seed, task_format(cfg.data))


# ------------------------------------------------------------------------------ regions
def split_regions(glob: dict[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Per tensor, the sorted flat indices of the watermark region: the
    ``numel - int(numel * (1 - fraction))`` entries with the smallest |θ| (stable order, so
    ties go to the lower index). The main region is the complement."""
    out = {}
    for k in sorted(glob):
        a = np.asarray(glob[k]).ravel()
        n_w = a.size - int(a.size * (1.0 - fraction))
        order = np.argsort(np.abs(a), kind="stable")
        out[k] = np.sort(order[:n_w]).astype(np.int64)
    return out


def main_mask(idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the main region of a tensor of ``shape`` (True = main)."""
    m = np.ones(int(np.prod(shape)), dtype=bool)
    m[idx] = False
    return m.reshape(shape)


def with_region(glob: dict[str, np.ndarray], idx: dict[str, np.ndarray],
                w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
    """``M ⊙ glob + W ⊙ w``: a copy of ``glob`` whose watermark entries are ``w``'s."""
    out = {}
    for k, a in glob.items():
        b = np.array(a, dtype=np.float32, copy=True)
        b.reshape(-1)[idx[k]] = w[k]
        out[k] = b
    return out


# ------------------------------------------------------------------------------ torch parts
def inject(bundle, start: dict[str, np.ndarray], idx: dict[str, np.ndarray],
           examples: list[Example], steps: int, batch: int, lr: float,
           seed: int) -> tuple[dict[str, np.ndarray], float]:  # fmt: skip
    """Server-side watermark injection: AdamW (no weight decay) on the answer loss of
    ``examples`` from the adapter ``start``, every LoRA tensor's gradient masked to its
    watermark region. Returns the new watermark values (per key, flat) and the mean loss.
    Only W is read back, so the main region cannot change."""
    import torch

    from romsim.fl.train import answer_loss, batch_order, set_adapter

    set_adapter(bundle, start)
    keys = sorted(bundle.params)
    params = [bundle.params[k] for k in keys]
    masks = {}
    for k in keys:
        m = torch.zeros(bundle.params[k].numel())
        m[torch.from_numpy(idx[k])] = 1.0
        masks[k] = m.view_as(bundle.params[k])
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    bundle.model.eval()  # no dropout while watermarking
    losses = []
    for ids in batch_order(len(examples), steps, min(batch, len(examples)), seed):
        loss = answer_loss(bundle, [examples[i] for i in ids])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for k in keys:
            g = bundle.params[k].grad
            if g is not None:
                g.mul_(masks[k])
        opt.step()
        losses.append(loss.item())
    out = {}
    for k in keys:
        p = bundle.params[k]
        p.requires_grad_(False)
        p.grad = None
        out[k] = p.detach().cpu().numpy().reshape(-1)[idx[k]].copy()
    return out, float(np.mean(losses)) if losses else 0.0


def query_triggers(bundle, wms: list[Watermark], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Ask the adapter in ``bundle`` every client's verification items (black box: its cloze
    answers and their scores). Per client: the share answered with the client's target
    (trigger accuracy) and the mean log-probability margin of the target over the best other
    option (nats)."""
    import torch

    from romsim.fl.train import _option_logprobs

    items = [e for w in wms for e in w.verify]
    hit = np.zeros(len(items), dtype=bool)
    gap = np.zeros(len(items))
    step = max(1, batch // 4)
    bundle.model.eval()
    with torch.inference_mode():
        for i in range(0, len(items), step):
            exs = items[i : i + step]
            lp, _ = _option_logprobs(bundle, [(e.prompt, o) for e in exs for o in e.options])
            j = 0
            for k, e in enumerate(exs):
                sc = lp[j : j + len(e.options)].double().numpy()
                other = np.delete(sc, e.label).max()
                hit[i + k] = int(sc.argmax()) == e.label
                gap[i + k] = sc[e.label] - other
                j += len(e.options)
    cuts = np.cumsum([0] + [len(w.verify) for w in wms])
    acc = np.array([hit[cuts[c] : cuts[c + 1]].mean() for c in range(len(wms))])
    mar = np.array([gap[cuts[c] : cuts[c + 1]].mean() for c in range(len(wms))])
    return acc, mar


def attribution(scores: np.ndarray, base: np.ndarray | None = None) -> dict:
    """The argmax client, its score, the runner-up and the margin; ``client`` is None when the
    top score is shared (no client can be named). With ``base`` (the reference model's scores
    on the same queries: the un-watermarked global adapter), the scores are ``scores - base``:
    what the adapter answers *beyond* what the main task alone makes it answer."""
    scores = np.asarray(scores, dtype=np.float64)
    if base is not None:
        scores = scores - np.asarray(base, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    top = int(order[0])
    second = int(order[1]) if len(order) > 1 else None
    s2 = float(scores[second]) if second is not None else 0.0
    margin = float(scores[top]) - s2
    return {"client": top if margin > 1e-9 else None, "score": float(scores[top]),
            "runner_up": second, "runner_up_score": s2, "margin": margin}  # fmt: skip


# ------------------------------------------------------------------------------ server state
class TraMarkServer:
    """The server side of TraMark in :class:`romsim.fl.runner.ServerLoop` (both engines): the
    split, the per-client watermark regions, injection, per-round metrics, checkpoint and the
    export of every client's personalized adapter."""

    CSV = ("wm_success", "wm_cross", "wm_base", "trace_rate", "wm_main_acc", "wm_acc_cost",
           "tramark_s")  # fmt: skip

    def __init__(self, cfg):
        self.cfg = cfg
        self.t = cfg.tramark
        self.n = cfg.n_clients
        self.wms = watermarks_for(cfg)
        self.idx: dict[str, np.ndarray] | None = None  # None until the split
        self.w: dict[int, dict[str, np.ndarray]] = {}
        self.split_round: int | None = None

    @property
    def active(self) -> bool:
        return self.idx is not None

    # ------------------------------------------------------------ models and updates
    def personal(self, cid: int, glob: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Client ``cid``'s personalized adapter (``glob`` itself before the split)."""
        if self.idx is None:
            return glob
        return with_region(glob, self.idx, self.w[cid])

    def strip(self, updates, glob):
        """The replies with their watermark entries reset to the global's, so only the main
        region is aggregated (no-op before the split)."""
        if self.idx is None:
            return updates
        from dataclasses import replace

        out = []
        for u in updates:
            arrs = {}
            for k, a in u.arrays.items():
                b = np.array(a, dtype=np.float32, copy=True)
                b.reshape(-1)[self.idx[k]] = np.asarray(glob[k]).reshape(-1)[self.idx[k]]
                arrs[k] = b
            out.append(replace(u, arrays=arrs))
        return out

    def _absorb(self, raw: dict[int, dict[str, np.ndarray]]) -> None:
        for cid, arrs in raw.items():
            for k, a in arrs.items():
                self.w[cid][k] = np.asarray(a, dtype=np.float32).reshape(-1)[self.idx[k]].copy()

    # ------------------------------------------------------------ the round
    def end_round(self, rnd: int, bundle, glob, raw: dict[int, dict[str, np.ndarray]],
                  test: list[Example], eval_batch: int,
                  glob_acc: float | None = None) -> tuple[dict, dict | None]:  # fmt: skip
        """After round ``rnd``'s aggregation: split (at the end of the warm-up), keep each
        replying client's trained watermark entries, inject every client, measure. Returns the
        metrics-row fields and the round's details (None during the warm-up). ``glob_acc``:
        the global adapter's held-out accuracy when already measured."""
        from romsim.fl.train import evaluate, set_adapter

        row = {k: float("nan") for k in self.CSV}
        row["tramark_s"] = 0.0
        if rnd < self.t.warmup_rounds:
            return row, None
        t0 = time.time()
        if self.idx is None:
            self.idx = split_regions(glob, self.t.watermark_fraction)
            self.split_round = rnd
            init = {k: np.asarray(glob[k]).reshape(-1)[i].copy() for k, i in self.idx.items()}
            self.w = {c: {k: v.copy() for k, v in init.items()} for c in range(self.n)}
            n_w = sum(len(i) for i in self.idx.values())
            n_all = sum(np.asarray(a).size for a in glob.values())
            log.info("tramark: regions split after round %d: %d of %d adapter entries (%.2f %%) "
                     "are the watermark region", rnd, n_w, n_all, 100 * n_w / n_all)  # fmt: skip
        self._absorb(raw)
        inject_loss = {}
        for c in range(self.n):
            seed = int(np.random.SeedSequence([self.t.seed, rnd, c, 7]).generate_state(1)[0])
            self.w[c], inject_loss[c] = inject(
                bundle, self.personal(c, glob), self.idx, self.wms[c].train, self.t.inject_steps,
                self.t.inject_batch, self.t.inject_lr, seed,
            )  # fmt: skip
        scores = np.zeros((self.n, self.n))  # [model, client]: trigger accuracy
        gaps = np.zeros((self.n, self.n))  # [model, client]: log-prob margin (nats)
        main_acc = np.zeros(self.n)
        for c in range(self.n):
            set_adapter(bundle, self.personal(c, glob))
            scores[c], gaps[c] = query_triggers(bundle, self.wms, eval_batch)
            main_acc[c] = evaluate(bundle, test, eval_batch)["accuracy"]
        set_adapter(bundle, glob)
        base, base_gap = query_triggers(bundle, self.wms, eval_batch)
        if glob_acc is None:
            glob_acc = evaluate(bundle, test, eval_batch)["accuracy"]
        traced = [attribution(gaps[c], base_gap)["client"] for c in range(self.n)]
        traced_acc = [attribution(scores[c])["client"] for c in range(self.n)]
        off = ~np.eye(self.n, dtype=bool)
        row.update({
            "wm_success": float(np.mean(np.diag(scores))),
            "wm_cross": float(scores[off].mean()) if self.n > 1 else float("nan"),
            "wm_base": float(base.mean()),
            "trace_rate": float(np.mean([t == c for c, t in enumerate(traced)])),
            "wm_main_acc": float(main_acc.mean()),
            "wm_acc_cost": float(glob_acc - main_acc.mean()),
            "tramark_s": time.time() - t0,
        })  # fmt: skip
        detail = {
            "split_round": self.split_round,
            "own_success": [float(scores[c, c]) for c in range(self.n)],
            "traced_to": traced,
            "traced_to_accuracy": traced_acc,
            "trace_rate_accuracy": float(np.mean([t == c for c, t in enumerate(traced_acc)])),
            "scores": scores.round(4).tolist(),
            "base_scores": base.round(4).tolist(),
            "margins": (gaps - base_gap).round(3).tolist(),
            "main_accuracy": main_acc.round(4).tolist(),
            "inject_loss": [round(inject_loss[c], 5) for c in range(self.n)],
            "seconds": row["tramark_s"],
        }
        log.info("round %d: tramark watermark success %.3f, cross-client %.3f, traced %d/%d, "
                 "main accuracy %.4f (global %.4f), %.2f s", rnd, row["wm_success"],
                 row["wm_cross"], sum(t == c for c, t in enumerate(traced)), self.n,
                 row["wm_main_acc"], glob_acc, row["tramark_s"])  # fmt: skip
        return row, detail

    # ------------------------------------------------------------ checkpoint
    def state_arrays(self) -> dict[str, np.ndarray]:
        if self.idx is None:
            return {}
        arrs: dict[str, np.ndarray] = {"split_round": np.array([self.split_round], np.int64)}
        for k, i in self.idx.items():
            arrs[f"idx/{k}"] = i
        for c, wc in self.w.items():
            for k, v in wc.items():
                arrs[f"w/{c}/{k}"] = v
        return arrs

    def file(self, ck: Path, rnd: int) -> Path:
        return ck / f"tramark-{rnd:04d}.npz"

    def save(self, ck: Path, rnd: int) -> None:
        """``checkpoint/tramark-NNNN.npz``, written before ``state.json`` names round NNNN."""
        from romsim.fl.files import save_npz

        save_npz(self.file(ck, rnd), self.state_arrays())

    def prune(self, ck: Path, rnd: int) -> None:
        for old in ck.glob("tramark-*.npz"):
            if old.name != self.file(ck, rnd).name:
                old.unlink()

    def load(self, ck: Path, rnd: int, shapes: dict[str, tuple[int, ...]]) -> None:
        """Resume: the state saved with round ``rnd``; anything missing, malformed or
        inconsistent with the adapter's shapes is one :class:`RomsimInputError` naming the file."""
        from romsim.fl.checkpoint import bad_file as _bad
        from romsim.fl.checkpoint import load_npz_checked as _load_npz_checked

        path = self.file(ck, rnd)
        arrs = _load_npz_checked(path)
        if not arrs:
            if rnd >= self.t.warmup_rounds:
                raise _bad(path, "split_round", None,
                           f"round {rnd} is after the warm-up but no TraMark split is saved")  # fmt: skip
            return
        sr = arrs.get("split_round")
        if sr is None or sr.shape != (1,) or not 0 < int(sr[0]) <= rnd:
            raise _bad(path, "split_round", None if sr is None else sr.tolist(),
                       f"must be one round in 1..{rnd}")  # fmt: skip
        idx, w = {}, {c: {} for c in range(self.n)}
        for name, a in arrs.items():
            if name == "split_round":
                continue
            part, _, rest = name.partition("/")
            if part == "idx" and rest in shapes:
                idx[rest] = a
            elif part == "w" and "/" in rest:
                c, _, k = rest.partition("/")
                if not (c.isdigit() and int(c) < self.n and k in shapes):
                    raise _bad(path, name, None, "is not a watermark tensor of this run")
                w[int(c)][k] = a
            else:
                raise _bad(path, name, None, "is not a TraMark state tensor")
        if set(idx) != set(shapes):
            raise _bad(path, "idx", f"{len(idx)} tensors",
                       f"the adapter has {len(shapes)} tensors")  # fmt: skip
        for k, i in idx.items():
            n = int(np.prod(shapes[k]))
            if (i.ndim != 1 or i.dtype.kind not in "iu" or len(np.unique(i)) != len(i)
                    or (len(i) and not 0 <= i.min() <= i.max() < n)):  # fmt: skip
                raise _bad(path, f"idx/{k}", tuple(i.shape), f"must be distinct indices < {n}")
        for c in range(self.n):
            if set(w[c]) != set(shapes):
                raise _bad(path, f"w/{c}", f"{len(w[c])} tensors",
                           f"client {c} needs one per adapter tensor ({len(shapes)})")  # fmt: skip
            for k, v in w[c].items():
                if v.shape != idx[k].shape or not np.all(np.isfinite(v)):
                    raise _bad(path, f"w/{c}/{k}", tuple(v.shape),
                               f"must be {len(idx[k])} finite values")  # fmt: skip
        self.idx = {k: idx[k].astype(np.int64) for k in sorted(idx)}
        self.w = {c: {k: w[c][k].astype(np.float32) for k in sorted(w[c])} for c in w}
        self.split_round = int(sr[0])

    # ------------------------------------------------------------ export
    def export(self, bundle, glob, out: Path) -> None:
        """``tramark/client-NN/``: every client's personalized adapter (PEFT format: what
        that client holds and could leak) and ``tramark/watermarks.json`` (the server's
        secrets: triggers and targets)."""
        from romsim.fl.train import export_peft, set_adapter

        out.mkdir(parents=True, exist_ok=True)
        for c in range(self.n):
            export_peft(bundle, self.personal(c, glob), str(out / f"client-{c:02d}"))
        set_adapter(bundle, glob)
        info = {"split_round": self.split_round,
                "watermark_fraction": self.t.watermark_fraction,
                "watermark_entries": {k: int(len(i)) for k, i in (self.idx or {}).items()},
                "clients": [w.describe() for w in self.wms]}  # fmt: skip
        (out / "watermarks.json").write_text(json.dumps(info, indent=1))


# ------------------------------------------------------------------------------ the tracer
def load_peft_arrays(adapter_dir: str | Path, bundle, lora_cfg) -> dict[str, np.ndarray]:
    """An exported PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) as
    canonical ``"{layer}.{kind}.A|B"`` arrays, checked against ``bundle``'s adapter: a missing
    file, another rank/alpha/target set, missing tensors or wrong shapes are one
    :class:`RomsimInputError`."""
    from romsim.functional.torch_ref import HF_LINEAR
    from romsim.paths import read_user_bytes, read_user_text

    d = Path(adapter_dir)
    if not d.is_dir():
        raise RomsimInputError("ADAPTER", str(d), "is not a folder (a PEFT adapter folder)")
    cfg_path = d / "adapter_config.json"
    try:
        acfg = json.loads(read_user_text(cfg_path, "ADAPTER", "JSON"))
    except json.JSONDecodeError as e:
        raise RomsimInputError("ADAPTER", str(cfg_path), f"is not valid JSON ({e})") from None
    if not isinstance(acfg, dict):
        raise RomsimInputError("ADAPTER", str(cfg_path), "is not a JSON object")
    for field, want in (("r", lora_cfg.rank), ("lora_alpha", lora_cfg.alpha)):
        if acfg.get(field) != want:
            raise RomsimInputError(f"adapter_config.{field}", acfg.get(field),
                                   f"the run's LoRA has {field} = {want}")  # fmt: skip
    raw = read_user_bytes(d / "adapter_model.safetensors", "ADAPTER")
    try:
        from safetensors.numpy import load

        st = load(raw)
    except Exception as e:  # safetensors raises its own error types
        raise RomsimInputError("ADAPTER", str(d / "adapter_model.safetensors"),
                               f"is not a safetensors file ({e})") from None  # fmt: skip
    out = {}
    for k, p in bundle.params.items():
        layer, kind, ab = k.split(".")
        name = f"base_model.model.model.layers.{layer}.{HF_LINEAR[kind]}.lora_{ab}.weight"
        if name not in st:
            raise RomsimInputError("ADAPTER", str(d), f"has no tensor {name} (another model?)")
        a = st[name]
        if tuple(a.shape) != tuple(p.shape):
            raise RomsimInputError(name, tuple(a.shape), f"expected shape {tuple(p.shape)}")
        if not np.all(np.isfinite(a)):
            raise RomsimInputError(name, tuple(a.shape), "holds NaN or inf")
        out[k] = a.astype(np.float32)
    return out


def find_run(adapter: str | Path, run: str | None) -> Path | None:
    """The run folder: ``--run``, else the first parent folder of ``adapter`` holding a
    ``config.json`` (None: none found)."""
    if run:
        return Path(run)
    return next((p for p in Path(adapter).resolve().parents if (p / "config.json").is_file()),
                None)  # fmt: skip


def run_config_for(run: Path | None, config: str | None):
    """The FL config of the run: ``--config``, else the run folder's ``config.json``."""
    from romsim.fl.config import fl_config_from_dict, load_fl_config
    from romsim.paths import read_user_text

    if config:
        return load_fl_config(config)
    if run is None:
        raise RomsimInputError("--run", None, "name the run folder (its config.json) or --config")
    path = run / "config.json"
    try:
        data = json.loads(read_user_text(path, "--run", "JSON"))
    except json.JSONDecodeError as e:
        raise RomsimInputError("--run", str(path), f"is not valid JSON ({e})") from None
    return fl_config_from_dict(data, source=str(path))


def trace_leak(adapter: str | Path, cfg, reference: str | Path | None = None) -> dict:
    """Which client the exported adapter ``adapter`` came from, by querying each client's
    triggers (black box: only the adapter's answers are used). ``reference``: the run's
    un-watermarked global adapter (``RUN/adapter``), whose margins on the same queries are
    subtracted (None: raw margins). ``by_accuracy`` is the official label-only criterion (the
    argmax of the trigger accuracies)."""
    if not cfg.tramark.enabled:
        raise RomsimInputError("tramark.enabled", False,
                               "the run had no TraMark watermarks to trace")  # fmt: skip
    from romsim.fl.train import load_bundle, set_adapter

    bundle = load_bundle(cfg.model, cfg.lora, cfg.train.torch_threads, cfg.train)
    arrays = load_peft_arrays(adapter, bundle, cfg.lora)
    ref = None if reference is None else load_peft_arrays(reference, bundle, cfg.lora)
    wms = watermarks_for(cfg)
    t0 = time.time()
    set_adapter(bundle, arrays)
    acc, gap = query_triggers(bundle, wms, cfg.train.eval_batch)
    base_acc = base_gap = None
    if ref is not None:
        set_adapter(bundle, ref)
        base_acc, base_gap = query_triggers(bundle, wms, cfg.train.eval_batch)

    def per(v):
        if v is None:
            return None
        return {str(w.cid): round(float(x), 4) for w, x in zip(wms, v, strict=True)}

    unit = "nats: target log-prob margin" + (" minus the reference's" if ref is not None else "")
    return {"adapter": str(adapter), "reference": None if reference is None else str(reference),
            "score_unit": unit, **attribution(gap, base_gap),
            "by_accuracy": attribution(acc),  # the official criterion (label-only)
            "margins": per(gap if base_gap is None else gap - base_gap),
            "trigger_accuracy": per(acc), "reference_trigger_accuracy": per(base_acc),
            "queries": int(sum(len(w.verify) for w in wms) * (1 if ref is None else 2)),
            "seconds": round(time.time() - t0, 3)}  # fmt: skip
