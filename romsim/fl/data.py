"""Federated data: a closed-answer task built from WordNet (Debian ``wordnet-base``), client
partitions (IID, Dirichlet non-IID over domains, one-domain-per-client) and a small synthetic
task for unit tests.

Both WordNet tasks are four-way closed-answer tasks scored as *cloze* (the way lm-eval-harness
scores ARC or HellaSwag): the prompt ends with a cue and each option is a continuation; the
model's choice is the option whose own tokens get the highest summed log-probability. The
default ("category") task:

    Word: today
    Meaning: the present time or age
    Category: time (noun)          <- options: " time (noun)", " location (noun)", ...

and the "word" task ("which word does this gloss define?"):

    Definition: a domesticated carnivorous mammal ...
    Word: dog                      <- options: " dog", " cat", " horse", " wolf"

Distractors come from the same part of speech (category task) or the same lexicographer file
(word task: noun.animal, verb.motion, adj.all, ... 45 in all), so every example has a natural
*domain*: its lexicographer category. Answer-letter scoring ("A. cat / B. dog / Answer: B") was
tried first and dropped: a 135M model learns the letter format but not the binding of letters to
options (docs/federated.md).

Pure Python + numpy; no torch.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from romsim.errors import RomsimInputError

# WordNet 3.0 lexicographer files, by number (lexnames(5WN)); fixed by the WordNet format.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/WordNet-3.0/dict")


@dataclass(frozen=True)
class Example:
    """One closed-answer item: ``prompt`` ends with the cue ("Category:"), each option is a
    continuation of it (leading space included), ``label`` indexes the right one."""

    prompt: str
    options: tuple[str, ...]
    label: int
    domain: str

    def __post_init__(self) -> None:
        if not 0 <= self.label < len(self.options):
            raise ValueError(f"label {self.label} outside the {len(self.options)} options")

    @property
    def answer(self) -> str:
        return self.options[self.label]


@dataclass(frozen=True)
class Dataset:
    name: str
    train: list[Example]
    test: list[Example]

    @property
    def domains(self) -> list[str]:
        return sorted({e.domain for e in self.train})


def find_wordnet_dir(explicit: str | None = None) -> Path:
    cands = [explicit] if explicit else [os.environ.get("WNHOME", ""), *WORDNET_DIRS]
    for c in cands:
        if c and (Path(c) / "data.noun").is_file():
            return Path(c)
    raise RomsimInputError(
        "data.wordnet_dir",
        explicit or ":".join(WORDNET_DIRS),
        "WordNet database not found: install the Debian package 'wordnet-base' "
        "(apt-get install wordnet-base) or point data.wordnet_dir at a WordNet 3.0 dict folder",
    )


def _common_lemmas(wn: Path) -> set[str]:
    """Lemmas seen at least once in the sense-tagged SemCor corpus (index tagsense_cnt > 0)."""
    out: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wn / f"index.{pos}").open(encoding="utf-8", errors="replace"):
            if line.startswith(" "):
                continue
            f = line.split()
            p_cnt = int(f[3])
            tagsense = int(f[5 + p_cnt])
            if tagsense > 0:
                out.add(f[0])
    return out


def read_wordnet_synsets(wn: Path) -> list[tuple[str, str, str]]:
    """(word, gloss definition, lexicographer category) for every synset with a common,
    single-word, alphabetic lemma. Deterministic order (file order)."""
    common = _common_lemmas(wn)
    rows: list[tuple[str, str, str]] = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wn / f"data.{pos}").open(encoding="utf-8", errors="replace"):
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            f = head.split()
            lex = LEXNAMES[int(f[1])]
            n_words = int(f[3], 16)
            words = [f[4 + 2 * i].split("(")[0] for i in range(n_words)]
            word = next(
                (w for w in words if w.isalpha() and w.islower() and w in common and len(w) <= 14),
                None,
            )
            if word is None:
                continue
            definition = gloss.split(";")[0].strip().strip('"').strip()
            if not (10 <= len(definition) <= 110) or word in definition.lower().split():
                continue
            rows.append((word, definition, lex))
    return rows


def make_mc_example(
    word: str, definition: str, domain: str, pool: list[str], rng: random.Random
) -> Example:
    distract = []
    while len(distract) < 3:
        w = pool[rng.randrange(len(pool))]
        if w != word and w not in distract:
            distract.append(w)
    slot = rng.randrange(4)
    opts = distract[:slot] + [word] + distract[slot:]
    prompt = f"Definition: {definition}\nWord:"
    return Example(prompt, tuple(f" {w}" for w in opts), slot, domain)


def category_name(lex: str) -> str:
    """Plain-words name of a lexicographer file: noun.animal -> "animal (noun)"."""
    pos, _, cat = lex.partition(".")
    cat = {"Tops": "top concept", "all": "general", "pert": "relational", "ppl": "participle"}.get(
        cat, cat
    )
    return f"{cat} ({ {'adj': 'adjective', 'adv': 'adverb'}.get(pos, pos) })"


def make_category_example(
    word: str, definition: str, domain: str, pool: list[str], rng: random.Random
) -> Example:
    """ "Which category does the word belong to?" with three other categories of the same part
    of speech where there are enough (else any) as distractors."""
    same = [d for d in pool if d != domain and d.split(".")[0] == domain.split(".")[0]]
    others = same if len(same) >= 3 else [d for d in pool if d != domain]
    distract = rng.sample(others, 3)
    slot = rng.randrange(4)
    opts = distract[:slot] + [domain] + distract[slot:]
    prompt = f"Word: {word}\nMeaning: {definition}\nCategory:"
    return Example(prompt, tuple(f" {category_name(d)}" for d in opts), slot, domain)


def wordnet_dataset(
    n_train: int = 2400,
    n_test: int = 400,
    seed: int = 0,
    min_domain_size: int = 60,
    wordnet_dir: str | None = None,
    task: str = "category",
) -> Dataset:
    """A WordNet multiple-choice task; test split disjoint by synset *and* by word. Domains
    with fewer than ``min_domain_size`` usable synsets are dropped.

    ``task = "category"``: word + gloss -> its lexicographer category (four categories offered).
    ``task = "word"``: gloss -> the word it defines (three same-category distractor words)."""
    if task not in ("category", "word"):
        raise RomsimInputError("data.task", task, "must be category or word")
    wn = find_wordnet_dir(wordnet_dir)
    rows = read_wordnet_synsets(wn)
    by_dom: dict[str, list[tuple[str, str]]] = {}
    for w, d, lex in rows:
        by_dom.setdefault(lex, []).append((w, d))
    by_dom = {k: v for k, v in by_dom.items() if len(v) >= min_domain_size}
    rng = random.Random(seed)
    # one synset per answer word, so test answers are unseen words
    all_rows = [(w, d, lex) for lex, v in sorted(by_dom.items()) for w, d in v]
    rng.shuffle(all_rows)
    seen: set[str] = set()
    uniq = []
    for w, d, lex in all_rows:
        if w not in seen:
            seen.add(w)
            uniq.append((w, d, lex))
    if len(uniq) < n_train + n_test:
        raise RomsimInputError(
            "data.n_train", n_train, f"WordNet gives only {len(uniq)} usable synsets"
        )
    pools = {lex: sorted({w for w, _ in v}) for lex, v in by_dom.items()}
    test_rows, train_rows = uniq[:n_test], uniq[n_test : n_test + n_train]
    if task == "word":
        test = [make_mc_example(w, d, lex, pools[lex], rng) for w, d, lex in test_rows]
        train = [make_mc_example(w, d, lex, pools[lex], rng) for w, d, lex in train_rows]
    else:
        cats = sorted(by_dom)
        test = [make_category_example(w, d, lex, cats, rng) for w, d, lex in test_rows]
        train = [make_category_example(w, d, lex, cats, rng) for w, d, lex in train_rows]
    return Dataset(f"wordnet-{task}", train, test)


def synthetic_dataset(n_train: int = 64, n_test: int = 32, seed: int = 0) -> Dataset:
    """Tiny, deterministic task for unit tests (not for results): pick the option equal to the
    number named in the prompt. Four domains (number ranges)."""
    rng = random.Random(seed)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def ex() -> Example:
        k = rng.randrange(10)
        pool = [str(i) for i in range(10)]
        return make_mc_example(str(k), f"the number {names[k]}", f"dom{k % 4}", pool, rng)

    return Dataset("synthetic", [ex() for _ in range(n_train)], [ex() for _ in range(n_test)])


# ---------------------------------------------------------------------------------- partitions
def partition(
    examples: list[Example], n_clients: int, scheme: str, alpha: float = 0.5, seed: int = 0
) -> list[list[int]]:
    """Indices of ``examples`` per client.

    - ``iid``: a seeded shuffle dealt round-robin.
    - ``dirichlet``: per domain, proportions over clients drawn from Dirichlet(alpha) (small
      alpha: each client sees few domains); every client gets at least one example.
    - ``domain``: domains sorted by size dealt to clients (largest first, to the client with
      the fewest examples), so each client holds whole domains only.
    """
    if n_clients < 1:
        raise RomsimInputError("federation.clients", n_clients, "must be >= 1")
    n = len(examples)
    rs = np.random.default_rng(seed)
    if scheme == "iid":
        perm = rs.permutation(n)
        return [sorted(perm[i::n_clients].tolist()) for i in range(n_clients)]
    doms: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        doms.setdefault(e.domain, []).append(i)
    keys = sorted(doms)
    out: list[list[int]] = [[] for _ in range(n_clients)]
    if scheme == "dirichlet":
        if alpha <= 0:
            raise RomsimInputError("data.alpha", alpha, "must be > 0")
        for k in keys:
            idx = rs.permutation(doms[k])
            p = rs.dirichlet([alpha] * n_clients)
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for c, part in enumerate(np.split(idx, cuts)):
                out[c].extend(part.tolist())
        for c in range(n_clients):  # no empty client: borrow from the largest
            if not out[c]:
                big = max(range(n_clients), key=lambda j: len(out[j]))
                out[c].append(out[big].pop())
        return [sorted(o) for o in out]
    if scheme == "domain":
        if len(keys) < n_clients:
            raise RomsimInputError(
                "data.partition", scheme, f"needs >= {n_clients} domains, the data has {len(keys)}"
            )
        for k in sorted(keys, key=lambda k: (-len(doms[k]), k)):
            c = min(range(n_clients), key=lambda j: (len(out[j]), j))
            out[c].extend(doms[k])
        return [sorted(o) for o in out]
    raise RomsimInputError("data.partition", scheme, "must be one of iid, dirichlet, domain")


def server_holdout(train: list[Example], n_aux: int) -> tuple[list[Example], list[Example]]:
    """(client pool, server-side auxiliary set): the last ``n_aux`` training examples are held
    out from every client (MASA's clean server data; 0: none)."""
    if n_aux <= 0:
        return train, []
    return train[:-n_aux], train[-n_aux:]


def load_dataset(cfg) -> Dataset:
    """The data set an FL config names (``cfg`` is :class:`romsim.fl.config.DataConfig`)."""
    if cfg.name == "wordnet":
        return wordnet_dataset(
            cfg.n_train, cfg.n_test, cfg.seed, wordnet_dir=cfg.wordnet_dir, task=cfg.task
        )
    if cfg.name == "synthetic":
        return synthetic_dataset(cfg.n_train, cfg.n_test, cfg.seed)
    raise RomsimInputError("data.name", cfg.name, "must be wordnet or synthetic")
