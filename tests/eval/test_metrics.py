import numpy as np
import pytest

from geoloc.eval import metrics
from geoloc.eval.metrics import joint_ranks, recall_at_k, retrieval_metrics


def best_correct_ranks(query_emb, gallery_emb, query_groups, gallery_groups, chunk_size=1024):
    """The exact ranks of the queries (the first side of `joint_ranks`), as the code computes them."""
    return joint_ranks(query_emb, gallery_emb, query_groups, gallery_groups, chunk_size=chunk_size)[0]


def naive_best_correct_ranks(query_emb, gallery_emb, query_groups, gallery_groups):
    """Reference: full score matrix, sort each row, position of the first correct item.

    Sorting by (-score, is_wrong) puts correct items ahead of equal-scoring wrong ones, so the
    items before the first correct one are exactly the strictly higher wrong items.
    """
    scores = np.asarray(query_emb, dtype=np.float32) @ np.asarray(gallery_emb, dtype=np.float32).T
    gallery_groups = np.asarray(gallery_groups)
    ranks = []
    for i, group in enumerate(query_groups):
        is_wrong = gallery_groups != group
        order = np.lexsort((is_wrong, -scores[i]))
        ranks.append(int(np.flatnonzero(~is_wrong[order])[0]))
    return np.array(ranks, dtype=np.int64)


def _grouped_data(seed, n_groups=50, n_images=150, n_texts=200, dim=16, quantized=True):
    """Random images and texts in shared groups; every group has >= 1 image and >= 1 text.

    Quantized embeddings (small multiples of 1/8) make every dot product exact in float32, so
    the reference and the chunked code agree bit for bit, and ties are frequent.
    """
    rng = np.random.default_rng(seed)
    image_groups = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n_images - n_groups)])
    text_groups = np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n_texts - n_groups)])
    rng.shuffle(image_groups)
    rng.shuffle(text_groups)
    if quantized:
        images = rng.integers(-2, 3, (n_images, dim)).astype(np.float32) / 8
        texts = rng.integers(-2, 3, (n_texts, dim)).astype(np.float32) / 8
    else:
        images = rng.standard_normal((n_images, dim)).astype(np.float32)
        texts = rng.standard_normal((n_texts, dim)).astype(np.float32)
        images /= np.linalg.norm(images, axis=1, keepdims=True)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return texts, images, [f"loc{g}" for g in text_groups], [f"loc{g}" for g in image_groups]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_matches_naive_both_directions(seed, quantized, chunk_size):
    texts, images, text_groups, image_groups = _grouped_data(seed, quantized=quantized)
    for q, g, qg, gg in (
        (texts, images, text_groups, image_groups),
        (images, texts, image_groups, text_groups),
    ):
        expected = naive_best_correct_ranks(q, g, qg, gg)
        got = best_correct_ranks(q, g, qg, gg, chunk_size=chunk_size)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
        assert (expected > 0).any() and (expected == 0).any()


def test_quantized_data_really_has_ties():
    texts, images, _, _ = _grouped_data(0)
    scores = texts @ images.T
    assert any(len(np.unique(row)) < len(row) for row in scores)


def test_element_and_pair_caps_do_not_change_ranks(monkeypatch):
    texts, images, text_groups, image_groups = _grouped_data(3)
    expected = naive_best_correct_ranks(texts, images, text_groups, image_groups)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMENTS", 500)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_PAIRS", 5)
    got = best_correct_ranks(texts, images, text_groups, image_groups, chunk_size=1024)
    np.testing.assert_array_equal(got, expected)


def test_one_group_with_most_of_the_gallery(monkeypatch):
    rng = np.random.default_rng(4)
    images = rng.integers(-2, 3, (60, 8)).astype(np.float32) / 8
    texts = rng.integers(-2, 3, (30, 8)).astype(np.float32) / 8
    image_groups = [0] * 55 + [1, 2, 3, 4, 5]
    text_groups = [0] * 20 + [1, 2, 3, 4, 5] * 2
    monkeypatch.setattr(metrics, "_MAX_CHUNK_PAIRS", 100)
    got = best_correct_ranks(texts, images, text_groups, image_groups, chunk_size=16)
    np.testing.assert_array_equal(got, naive_best_correct_ranks(texts, images, text_groups, image_groups))


def test_tie_between_correct_and_wrong_is_a_hit():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    # The wrong item (group "b") scores exactly as high as the correct one.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ranks = best_correct_ranks(query, gallery, ["a"], ["b", "a", "c"])
    assert ranks.tolist() == [0]
    # A strictly higher wrong item does count.
    gallery[0] = [2.0, 0.0]
    assert best_correct_ranks(query, gallery, ["a"], ["b", "a", "c"]).tolist() == [1]


def test_best_correct_item_is_used_not_the_first():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[0.0, 1.0], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    # Correct items score 0.0 and 0.9; only the wrong 0.5 would beat the worse one.
    assert best_correct_ranks(query, gallery, ["a"], ["a", "b", "a"]).tolist() == [0]


def _hand_example():
    # t0 and t2 are the same vector; i2 is the 3-4-5 direction.
    texts = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    return texts, images, ["a", "b", "c"], ["a", "b", "c"]


def test_hand_computed_example():
    texts, images, text_groups, image_groups = _hand_example()
    # t0->i0: 1.0 is best, rank 0. t1->i1: 0.8 but i2 scores 1.0, rank 1.
    # t2->i2: 0.6 but i0 scores 1.0, rank 1.
    assert best_correct_ranks(texts, images, text_groups, image_groups).tolist() == [0, 1, 1]
    # i0->t0: 1.0, tied by wrong t2, rank 0. i1->t1: 0.8 is best, rank 0.
    # i2->t2: 0.6 but t1 scores 1.0, rank 1.
    assert best_correct_ranks(images, texts, image_groups, text_groups).tolist() == [0, 0, 1]

    result = retrieval_metrics(texts, images, text_groups, image_groups)
    assert set(result) == {"text_to_image", "image_to_text", "mean", "n_texts", "n_images"}
    assert result["text_to_image"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0})
    assert result["image_to_text"] == pytest.approx({"R@1": 200 / 3, "R@5": 100.0, "R@10": 100.0})
    assert result["mean"] == pytest.approx(500 / 6)
    assert result["n_texts"] == 3 and result["n_images"] == 3
    assert all(
        type(v) is float for d in (result["text_to_image"], result["image_to_text"]) for v in d.values()
    )
    assert type(result["mean"]) is float

    result = retrieval_metrics(texts, images, text_groups, image_groups, ks=(1, 2), chunk_size=1)
    assert result["text_to_image"] == pytest.approx({"R@1": 100 / 3, "R@2": 100.0})
    assert result["mean"] == pytest.approx((100 / 3 + 100 + 200 / 3 + 100) / 4)


def test_image_without_text_is_a_distractor_but_not_a_query():
    texts, images, text_groups, image_groups = _hand_example()
    # An extra image of a group no text describes, scoring highest for t1.
    images = np.vstack([images, [[0.6, 0.8]]]).astype(np.float32)
    images[3] = [0.0, 2.0]
    image_groups = image_groups + ["z"]
    result = retrieval_metrics(texts, images, text_groups, image_groups)
    # t1's rank grows from 1 to 2 (still within 5); image_to_text is unchanged.
    assert result["text_to_image"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0})
    assert best_correct_ranks(texts, images, text_groups, image_groups).tolist() == [0, 2, 1]
    assert result["image_to_text"] == pytest.approx({"R@1": 200 / 3, "R@5": 100.0, "R@10": 100.0})
    assert result["n_images"] == 4


def test_recall_at_k_on_given_ranks():
    ranks = np.array([0, 0, 1, 4, 5, 9, 10, 100])
    assert recall_at_k(ranks) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}
    assert recall_at_k(ranks, ks=(2, 1000)) == {"R@2": 37.5, "R@1000": 100.0}
    with pytest.raises(ValueError):
        recall_at_k(np.array([], dtype=np.int64))
    with pytest.raises(ValueError):
        recall_at_k(ranks, ks=(0,))


def test_query_without_correct_item_raises():
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"2 of 3 texts.*first: text 1"):
        best_correct_ranks(emb, emb, ["a", "x", "y"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="text 1"):
        retrieval_metrics(emb, emb, ["a", "x", "c"], ["a", "b", "c"])


def test_mixed_group_types_are_not_conflated():
    emb = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="no image of their group"):
        best_correct_ranks(emb, emb, [1, "1"], ["1", "2"])
    assert best_correct_ranks(emb, emb, [1, "1"], [1, "1"]).tolist() == [0, 0]
    assert best_correct_ranks(emb, emb, [1, "1"], ["1", 1]).tolist() == [1, 1]


def test_bad_inputs_raise():
    emb = np.eye(3, dtype=np.float32)
    groups = ["a", "b", "c"]
    with pytest.raises(ValueError, match="dimension"):
        best_correct_ranks(emb, emb[:, :2], groups, groups)
    with pytest.raises(ValueError, match="text groups"):
        best_correct_ranks(emb, emb, groups[:2], groups)
    with pytest.raises(ValueError, match="chunk_size"):
        best_correct_ranks(emb, emb, groups, groups, chunk_size=0)
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        best_correct_ranks(bad, emb, groups, groups)


def naive_recalls(texts, images, text_groups, image_groups, ks=(1, 5, 10)):
    """Reference recalls of both directions from full sorted rankings (images without texts skipped)."""
    t2i = naive_best_correct_ranks(texts, images, text_groups, image_groups)
    query = np.isin(np.asarray(image_groups), np.asarray(text_groups))
    i2t = naive_best_correct_ranks(
        images[query], texts, [g for g, q in zip(image_groups, query, strict=True) if q], text_groups
    )
    return {f"R@{k}": 100 * np.mean(t2i < k) for k in ks}, {f"R@{k}": 100 * np.mean(i2t < k) for k in ks}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_one_pass_scoring_matches_naive_both_directions(seed, quantized, chunk_size):
    """retrieval_metrics scores both directions in ONE pass; it must equal two full sortings."""
    texts, images, text_groups, image_groups = _grouped_data(seed, quantized=quantized, n_texts=260)
    if seed == 3:  # images of a group without any text: distractors only, not queries
        image_groups = image_groups[:-5] + ["lonely"] * 5
    got = retrieval_metrics(texts, images, text_groups, image_groups, ks=(1, 2, 5, 10), chunk_size=chunk_size)
    t2i, i2t = naive_recalls(texts, images, text_groups, image_groups, ks=(1, 2, 5, 10))
    assert got["text_to_image"] == pytest.approx(t2i, abs=1e-9)
    assert got["image_to_text"] == pytest.approx(i2t, abs=1e-9)
    assert 0 < got["image_to_text"]["R@1"] < got["image_to_text"]["R@10"] < 100


@pytest.mark.parametrize("max_rank", [1, 3, 10])
def test_joint_ranks_equal_exact_ranks_capped(max_rank, monkeypatch):
    # Small blocks (the element cap) so the running top-k crosses many blocks.
    monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMENTS", 150 * 3)
    texts, images, text_groups, image_groups = _grouped_data(5, n_texts=300)
    text_ranks, image_ranks, is_query = joint_ranks(
        texts, images, text_groups, image_groups, max_rank=max_rank
    )
    np.testing.assert_array_equal(
        text_ranks, naive_best_correct_ranks(texts, images, text_groups, image_groups)
    )
    exact = naive_best_correct_ranks(images, texts, image_groups, text_groups)
    assert is_query.all()
    np.testing.assert_array_equal(image_ranks, np.minimum(exact, max_rank))
    assert (exact >= max_rank).any() and (exact < max_rank).any()
