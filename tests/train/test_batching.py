import random

from geoloc.train.batching import epoch_batches


def test_every_item_once_and_no_group_twice_in_a_batch() -> None:
    rng = random.Random(0)
    groups = [str(rng.randrange(30)) for _ in range(500)]
    batches = epoch_batches(groups, batch_size=10, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert 1 <= len(batch) <= 10
        assert len({groups[i] for i in batch}) == len(batch)


def test_order_depends_only_on_seed_and_epoch() -> None:
    groups = [str(i // 3) for i in range(90)]
    assert epoch_batches(groups, 8, seed=1, epoch=0) == epoch_batches(groups, 8, seed=1, epoch=0)
    assert epoch_batches(groups, 8, seed=1, epoch=0) != epoch_batches(groups, 8, seed=1, epoch=1)
    assert epoch_batches(groups, 8, seed=1, epoch=0) != epoch_batches(groups, 8, seed=2, epoch=0)


def test_one_dominant_group_still_terminates() -> None:
    groups = ["a"] * 6 + ["b", "c"]
    batches = epoch_batches(groups, batch_size=3, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(sum(groups[i] == "a" for i in b) <= 1 for b in batches)
