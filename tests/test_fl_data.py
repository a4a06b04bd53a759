"""Federated data: the WordNet task, the synthetic task and client partitions."""

from __future__ import annotations

import pytest

from romsim.errors import RomsimInputError
from romsim.fl.data import partition, synthetic_dataset, wordnet_dataset


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "domain"])
def test_partitions_cover_every_example_once(scheme):
    ds = synthetic_dataset(200, 10, seed=1)
    parts = partition(ds.train, 4, scheme, alpha=0.3, seed=0)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(200))
    assert all(parts)
    assert parts == partition(ds.train, 4, scheme, alpha=0.3, seed=0)  # seeded


def test_domain_partition_keeps_domains_whole_and_dirichlet_skews():
    ds = synthetic_dataset(400, 10, seed=2)
    parts = partition(ds.train, 4, "domain")
    owners = {}
    for c, p in enumerate(parts):
        for i in p:
            owners.setdefault(ds.train[i].domain, set()).add(c)
    assert all(len(o) == 1 for o in owners.values())
    iid = partition(ds.train, 4, "iid")
    dirich = partition(ds.train, 4, "dirichlet", alpha=0.1)

    def spread(parts):  # mean number of domains a client holds
        return sum(len({ds.train[i].domain for i in p}) for p in parts) / len(parts)

    assert spread(dirich) < spread(iid)
    with pytest.raises(RomsimInputError):
        partition(ds.train, 4, "nope")


def test_wordnet_task():
    try:
        ds = wordnet_dataset(n_train=300, n_test=100, seed=0)
    except RomsimInputError as e:
        assert "wordnet-base" in str(e)
        pytest.skip("Debian package wordnet-base not installed")
    assert len(ds.train) == 300 and len(ds.test) == 100
    for e in ds.train[:50]:
        assert e.prompt.endswith("\nCategory:") and len(set(e.options)) == 4
        assert all(o.startswith(" ") for o in e.options)
    words = lambda xs: {x.prompt.split("\n")[0] for x in xs}  # noqa: E731
    assert not words(ds.train) & words(ds.test)  # held-out words
    assert len(ds.domains) >= 20
    # the right option's slot is balanced enough that a constant position scores ~25 %
    share = max(sum(x.label == k for x in ds.test) for k in range(4)) / len(ds.test)
    assert share < 0.4
    # ... and so is the answer text: no category is the answer to most items
    top = max(sum(x.answer == a for x in ds.test) for a in {x.answer for x in ds.test})
    assert top / len(ds.test) < 0.3
    w = wordnet_dataset(n_train=50, n_test=20, seed=0, task="word")
    e = w.test[0]
    assert e.prompt.startswith("Definition: ") and e.prompt.endswith("\nWord:")
    assert e.answer.strip() not in e.prompt.lower().split()
