"""Tests for geoloc.eval.protocols: the GeoText-1652 and CVG-Text scoring protocols."""

from __future__ import annotations

import math
import re
from functools import partial

import numpy as np
import pytest

from geoloc.distance import haversine_km
from geoloc.eval import protocols
from geoloc.eval.metrics import retrieval_metrics
from geoloc.eval.protocols import (
    CVGTEXT_FIELDS,
    cvgtext_metrics,
    format_cvgtext_table,
    geotext_metrics,
    official_building_labels,
)
from geoloc.eval.results import with_flat_keys

R_KM = 6371.0

# --- a naive CVG-Text reference: full matrices, one query at a time ------------------------------


def naive_coordinates(name: str) -> tuple[float, float]:
    base = name.rsplit("/", 1)[-1]
    match = re.match(r"([-+]?[0-9]*\.?[0-9]+),([-+]?[0-9]*\.?[0-9]+)", base)
    assert match is not None
    return float(match.group(1)), float(match.group(2))


def naive_haversine_km(lat1, lon1, lat2, lon2):
    """The textbook formula, on numbers or numpy arrays."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * R_KM * np.arctan2(np.sqrt(a), np.sqrt(1 - a))


def naive_cvgtext(text_emb, image_emb, text_keys, image_keys, nearest=100, full_city=False):
    """Per query: sort every image by (not true, distance, index), keep `nearest`, rank by score."""
    scores = np.asarray(text_emb, np.float32) @ np.asarray(image_emb, np.float32).T
    coords = np.array([naive_coordinates(k) for k in image_keys])
    index = np.arange(len(image_keys))
    results = {"all": [], "panorama": [], "single_view": []}
    for t, key in enumerate(text_keys):
        true = image_keys.index(key)
        dist = naive_haversine_km(coords[true, 0], coords[true, 1], coords[:, 0], coords[:, 1])
        order = np.lexsort((index, dist, index != true))
        gallery = order if full_city else order[:nearest]
        rank = int(np.sum(scores[t, gallery] > scores[t, true]))
        top1 = gallery[int(np.flatnonzero(scores[t, gallery] == scores[t, gallery].max())[0])]
        error = 0.0 if rank == 0 else float(dist[top1])
        subset = "panorama" if len(key.split("_")) > 2 else "single_view"
        results["all"].append((rank, error))
        results[subset].append((rank, error))
    out = {}
    for name, rows in results.items():
        if not rows:
            out[name] = {**dict.fromkeys(CVGTEXT_FIELDS[:-1]), "n": 0}
            continue
        ranks = np.array([r for r, _ in rows])
        errors = np.array([e for _, e in rows])
        out[name] = {
            "R@1": 100 * np.mean(ranks < 1),
            "R@5": 100 * np.mean(ranks < 5),
            "R@10": 100 * np.mean(ranks < 10),
            "L@50": 100 * np.mean(errors <= 0.05),
            "L@100": 100 * np.mean(errors <= 0.1),
            "L@150": 100 * np.mean(errors <= 0.15),
            "mean_error_km": float(errors.mean()),
            "n": len(rows),
        }
    return out


def random_city(seed, n_images=240, n_texts=180, dim=12, quantized=True):
    """Random locations in a ~1.5 km square, panorama and photo names mixed, texts shuffled."""
    rng = np.random.default_rng(seed)
    lats = 40.70 + rng.uniform(0, 0.0135, n_images)
    lons = -74.00 + rng.uniform(0, 0.0178, n_images)
    keys = []
    for i, (lat, lon) in enumerate(zip(lats, lons, strict=True)):
        if rng.random() < 0.5:
            keys.append(f"{lat:.8f},{lon:.8f}_2022-08_pano{i}_d{rng.integers(360)}_z2.jpg")
        else:
            keys.append(f"{lat:.8f},{lon:.8f}_{i}.jpg")
    text_keys = [keys[i] for i in rng.choice(n_images, n_texts, replace=False)]
    if quantized:
        image_emb = rng.integers(-2, 3, (n_images, dim)).astype(np.float32) / 8
        text_emb = rng.integers(-2, 3, (n_texts, dim)).astype(np.float32) / 8
    else:
        image_emb = rng.standard_normal((n_images, dim)).astype(np.float32)
        text_emb = rng.standard_normal((n_texts, dim)).astype(np.float32)
        image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
        text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    # Make the task learnable, so hits, near misses and far misses all occur.
    truth = np.array([keys.index(k) for k in text_keys])
    text_emb += image_emb[truth] * (rng.random((n_texts, 1)) < 0.5)
    return text_emb, image_emb, text_keys, keys


def assert_same(got, expected):
    assert set(got) == set(expected)
    for name in expected:
        assert list(got[name]) == list(CVGTEXT_FIELDS)
        for field in CVGTEXT_FIELDS:
            if expected[name][field] is None:
                assert got[name][field] is None
            else:
                assert got[name][field] == pytest.approx(expected[name][field], rel=1e-9, abs=1e-9), (
                    name,
                    field,
                )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quantized", [True, False])
def test_cvgtext_matches_naive(seed, quantized, monkeypatch):
    text_emb, image_emb, text_keys, image_keys = random_city(seed, quantized=quantized)
    for nearest, full_city in ((100, False), (7, False), (1000, False), (100, True)):
        expected = naive_cvgtext(text_emb, image_emb, text_keys, image_keys, nearest, full_city)
        assert 0 < expected["panorama"]["n"] < expected["all"]["n"]
        for chunk_size in (1, 13, 1000):
            got = cvgtext_metrics(
                text_emb,
                image_emb,
                text_keys,
                image_keys,
                nearest=nearest,
                full_city=full_city,
                chunk_size=chunk_size,
            )
            assert got["protocol"] == ("cvgtext-full-city" if full_city else "cvgtext")
            assert {"protocol", "subsets", "primary_metric"} <= set(got)
            assert got["primary_metric"] == "text_to_image_R@1"
            assert got["text_to_image_R@1"] == got["all_R@1"] == got["subsets"]["all"]["R@1"]
            assert got["single_view_L@50"] == got["subsets"]["single_view"]["L@50"]
            assert_same(got["subsets"], expected)
    # The block size is also capped by the gallery size; a tiny cap must not change anything.
    monkeypatch.setattr(protocols, "_MAX_CHUNK_ELEMENTS", 500)
    assert_same(
        cvgtext_metrics(text_emb, image_emb, text_keys, image_keys)["subsets"],
        naive_cvgtext(text_emb, image_emb, text_keys, image_keys),
    )


def test_cvgtext_random_data_covers_all_outcomes():
    text_emb, image_emb, text_keys, image_keys = random_city(0)
    result = naive_cvgtext(text_emb, image_emb, text_keys, image_keys)["all"]
    assert 0 < result["R@1"] < result["R@10"] < 100
    assert 0 < result["L@150"] < 100 and result["mean_error_km"] > 0.15


# --- a hand-made CVG-Text case ---------------------------------------------------------------------

# Five locations on the meridian lon = 0; along a meridian the haversine distance is R * dlat.
HAND_LATS = (0.0, 0.0003, 0.0007, 0.0012, 0.003)


def hand_case():
    image_keys = [
        f"{HAND_LATS[0]:.4f},0.0000_2022-08_p0_d0_z2.jpg",  # panorama
        f"{HAND_LATS[1]:.4f},0.0000_2022-08_p1_d0_z2.jpg",  # panorama
        f"{HAND_LATS[2]:.4f},0.0000_a.jpg",
        f"{HAND_LATS[3]:.4f},0.0000_b.jpg",
        f"{HAND_LATS[4]:.4f},0.0000.jpg",
    ]
    image_emb = np.eye(5, dtype=np.float32)
    # Text t (true image t) points at image `points[t]`: rank 0 if that is t, else rank 1 (only
    # that image scores above the true one; the rest tie with it at 0, in the query's favour).
    points = [0, 0, 0, 4, 1]
    text_emb = np.eye(5, dtype=np.float32)[points]
    return text_emb, image_emb, list(image_keys), image_keys


def metres(dlat_deg):
    return R_KM * 1000 * math.radians(dlat_deg)


def test_cvgtext_hand_made_case():
    text_emb, image_emb, text_keys, image_keys = hand_case()
    # errors: 0, 33.4 m, 77.8 m, 200.2 m, 300.2 m
    errors_m = [0.0, metres(0.0003), metres(0.0007), metres(0.0018), metres(0.0027)]
    assert errors_m[1] < 50 < errors_m[2] < 100 < 150 < errors_m[3]
    result = cvgtext_metrics(text_emb, image_emb, text_keys, image_keys)
    assert result["protocol"] == "cvgtext"
    everything = result["subsets"]["all"]
    assert everything["R@1"] == pytest.approx(20.0)
    assert everything["R@5"] == pytest.approx(100.0)
    assert everything["R@10"] == pytest.approx(100.0)
    assert everything["L@50"] == pytest.approx(40.0)
    assert everything["L@100"] == pytest.approx(60.0)
    assert everything["L@150"] == pytest.approx(60.0)
    assert everything["mean_error_km"] == pytest.approx(sum(errors_m) / 5 / 1000)
    assert everything["n"] == 5

    panorama = result["subsets"]["panorama"]
    assert panorama["n"] == 2
    assert panorama["R@1"] == pytest.approx(50.0)
    assert panorama["L@50"] == pytest.approx(100.0)
    assert panorama["mean_error_km"] == pytest.approx(errors_m[1] / 2 / 1000)

    single = result["subsets"]["single_view"]
    assert single["n"] == 3
    assert single["R@1"] == pytest.approx(0.0)
    assert single["L@50"] == pytest.approx(0.0)
    assert single["L@100"] == pytest.approx(100 / 3)
    assert single["L@150"] == pytest.approx(100 / 3)
    assert single["mean_error_km"] == pytest.approx(sum(errors_m[2:]) / 3 / 1000)

    full = cvgtext_metrics(text_emb, image_emb, text_keys, image_keys, full_city=True)
    assert full["protocol"] == "cvgtext-full-city"
    assert full["subsets"] == result["subsets"]  # 5 images: the 100-nearest gallery is the city


def test_cvgtext_nearest_prior_changes_the_hand_made_case():
    text_emb, image_emb, text_keys, image_keys = hand_case()
    # With 2 images per gallery, the distractors of texts 2, 3 and 4 are no longer in their
    # galleries (each keeps only its true image and its nearest neighbour); text 1 keeps image 0.
    result = cvgtext_metrics(text_emb, image_emb, text_keys, image_keys, nearest=2)["subsets"]["all"]
    assert result["R@1"] == pytest.approx(80.0)
    assert result["L@50"] == pytest.approx(100.0)
    assert result["mean_error_km"] == pytest.approx(metres(0.0003) / 5 / 1000)


def test_cvgtext_true_image_always_in_the_gallery():
    # Five images at the same spot: the 1-image gallery must be the true one, not the first listed.
    keys = [f"35.68000000,139.76000000_{i}.jpg" for i in range(5)]
    image_emb = np.eye(5, dtype=np.float32)
    text_emb = np.ones((5, 5), dtype=np.float32) - np.eye(5, dtype=np.float32)  # prefers others
    result = cvgtext_metrics(text_emb, image_emb, keys, keys, nearest=1)["subsets"]
    assert result["all"]["R@1"] == 100.0 and result["all"]["mean_error_km"] == 0.0
    # With the whole city the true image loses, but the error is still 0 m (same spot).
    full = cvgtext_metrics(text_emb, image_emb, keys, keys, full_city=True)["subsets"]["all"]
    assert full["R@1"] == 0.0 and full["L@50"] == 100.0 and full["mean_error_km"] == 0.0


def test_cvgtext_empty_subset_and_table():
    text_emb, image_emb, _, _ = hand_case()
    keys = [f"{lat:.4f},0.0000_{i}.jpg" for i, lat in enumerate(HAND_LATS)]
    result = cvgtext_metrics(text_emb, image_emb, keys, keys)
    assert result["subsets"]["panorama"] == {**dict.fromkeys(CVGTEXT_FIELDS[:-1]), "n": 0}
    assert result["subsets"]["single_view"] == result["subsets"]["all"]
    table = format_cvgtext_table(result, title="Tokyo satellite")
    lines = table.splitlines()
    assert lines[0] == "Tokyo satellite"
    assert lines[1] == "protocol: cvgtext"
    assert lines[2] == "| queries | R@1 | R@5 | R@10 | L@50 | L@100 | L@150 | mean error (km) | n |"
    assert lines[4].startswith("| all | 20.00 | 100.00 | 100.00 | 40.00 | 60.00 | 60.00 | 0.")
    assert lines[4].endswith(" | 5 |")
    assert lines[5] == "| panorama | - | - | - | - | - | - | - | 0 |"
    assert lines[6].startswith("| single-view | 20.00 |")


def test_cvgtext_input_errors():
    text_emb, image_emb, text_keys, image_keys = hand_case()
    with pytest.raises(ValueError, match="have no image"):
        cvgtext_metrics(text_emb, image_emb, ["1.0,1.0_x.jpg"] + text_keys[1:], image_keys)
    with pytest.raises(ValueError, match="listed twice"):
        cvgtext_metrics(text_emb, image_emb, text_keys, image_keys[:4] + image_keys[:1])
    with pytest.raises(ValueError, match="nearest must be >= 1"):
        cvgtext_metrics(text_emb, image_emb, text_keys, image_keys, nearest=0)
    with pytest.raises(ValueError, match="text keys for"):
        cvgtext_metrics(text_emb, image_emb, text_keys[:3], image_keys)
    with pytest.raises(ValueError, match="NaN"):
        cvgtext_metrics(text_emb * np.nan, image_emb, text_keys, image_keys)


def test_haversine_km():
    assert haversine_km(0, 0, 0, 0) == 0.0
    assert haversine_km(0, 0, 1, 0) == pytest.approx(R_KM * math.pi / 180)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(R_KM * math.pi)
    # New York to Tokyo, checked against the plain formula.
    assert haversine_km(40.7128, -74.006, 35.6762, 139.6503) == pytest.approx(
        naive_haversine_km(40.7128, -74.006, 35.6762, 139.6503)
    )


# --- GeoText-1652 --------------------------------------------------------------------------------


def test_official_building_labels():
    assert official_building_labels([]) == []
    assert official_building_labels(["A"]) == [0]
    # The first image of each new run gets the previous run's label; a building that comes back
    # later gets a new label.
    assert official_building_labels(["A", "A", "B", "B", "A"]) == [0, 0, 0, 1, 1]
    assert official_building_labels(["0001", "0002", "0003", "0003"]) == [0, 0, 1, 2]


def test_geotext_metrics_is_retrieval_metrics_by_building():
    rng = np.random.default_rng(0)
    image_groups = [f"{g:04d}" for g in rng.integers(0, 6, 30)]
    text_groups = [image_groups[i] for i in rng.integers(0, 30, 50)]
    text_emb = rng.standard_normal((50, 8)).astype(np.float32)
    image_emb = rng.standard_normal((30, 8)).astype(np.float32)
    result = geotext_metrics(text_emb, image_emb, text_groups, image_groups)
    expected = retrieval_metrics(text_emb, image_emb, text_groups, image_groups)
    assert result == with_flat_keys({"protocol": "geotext1652", **expected})
    # The documented nested keys stay; flat keys and the primary metric are added beside them.
    assert {k: result[k] for k in expected} == expected
    assert result["primary_metric"] == "text_to_image_R@1"
    assert result["text_to_image_R@1"] == expected["text_to_image"]["R@1"]
    assert result["image_to_text_R@10"] == expected["image_to_text"]["R@10"]


def geotext_quirk_example():
    """Images in record order: A1, A2 (building A), B1, B2 (building B); one text per image.

    Image j is the unit vector e_j; each text is its own image's vector, except B2's text, which
    looks exactly like B1. Correct labels: every text's best image is of its own building, so all
    recalls are 100. The official labels are A1, A2, B1 -> 0 and B2 -> 1 (B1 took A's label):
    B2's text (label 1) now ranks B1 (label 0) above its only correct image B2, so its rank is 1
    and text -> image R@1 drops to 3/4 = 75; the mean drops to (75 + 5 * 100) / 6.
    """
    image_emb = np.eye(4, dtype=np.float32)
    text_emb = image_emb[[0, 1, 2, 2]]
    groups = ["A", "A", "B", "B"]
    return text_emb, image_emb, list(groups), groups, [0, 1, 2, 3]


def test_geotext_official_quirks_change_the_numbers():
    text_emb, image_emb, text_groups, image_groups, index = geotext_quirk_example()
    correct = geotext_metrics(text_emb, image_emb, text_groups, image_groups)
    assert correct["protocol"] == "geotext1652"
    assert correct["text_to_image"] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    assert correct["image_to_text"] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    assert correct["mean"] == 100.0

    quirks = geotext_metrics(
        text_emb, image_emb, text_groups, image_groups, protocol="official-quirks", text_image_index=index
    )
    assert quirks["protocol"] == "geotext1652-official-quirks"
    assert quirks["text_to_image"] == {"R@1": 75.0, "R@5": 100.0, "R@10": 100.0}
    assert quirks["image_to_text"] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}
    assert quirks["mean"] == pytest.approx((75 + 5 * 100) / 6)
    assert quirks["n_texts"] == 4 and quirks["n_images"] == 4


def test_geotext_quirks_need_consistent_text_image_index():
    text_emb, image_emb, text_groups, image_groups, index = geotext_quirk_example()
    quirks = partial(
        geotext_metrics, text_emb, image_emb, text_groups, image_groups, protocol="official-quirks"
    )
    with pytest.raises(ValueError, match="needs text_image_index"):
        quirks()
    with pytest.raises(ValueError, match="but its image"):
        quirks(text_image_index=[0, 2, 2, 3])
    with pytest.raises(ValueError, match="outside the images"):
        quirks(text_image_index=[0, 1, 2, 4])
    with pytest.raises(ValueError, match="text groups for"):
        geotext_metrics(text_emb, image_emb, text_groups[:3], image_groups)


def test_geotext_record_layout_checks() -> None:
    text_emb, image_emb, text_groups, image_groups, index = geotext_quirk_example()
    quirks = partial(
        geotext_metrics,
        text_emb,
        image_emb,
        text_groups,
        image_groups,
        protocol="official-quirks",
        text_image_index=index,
    )
    # One record per image is the default layout: giving it explicitly changes nothing.
    plain = quirks()
    explicit = quirks(record_images=[0, 1, 2, 3], text_records=[0, 1, 2, 3])
    assert explicit == plain
    with pytest.raises(ValueError, match="give both or neither"):
        quirks(record_images=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="not its own image"):
        quirks(record_images=[0, 1, 2, 3], text_records=[1, 0, 2, 3])
    with pytest.raises(ValueError, match="GeoText-1652 protocol: .* is not one of"):
        geotext_metrics(text_emb, image_emb, text_groups, image_groups, protocol="leaderboard")
    with pytest.raises(ValueError, match="protocol paper needs text_image_index"):
        geotext_metrics(text_emb, image_emb, text_groups, image_groups, protocol="paper")


def test_geotext_paper_protocol_duplicates_images_per_caption() -> None:
    """Two buildings; image A1 has six captions, B1 and B2 one each. Every text's best image is
    of the other building, its second of its own: text -> image R@1 is 0 and R@5 100 under the
    benchmark. With a gallery row per caption, B1's and B2's texts face six copies of A1 first,
    so their first correct row is seventh: R@1 is still 0, R@5 drops to 6/8, R@10 is 100."""
    image_emb = np.eye(3, dtype=np.float32)  # A1, B1, B2
    image_groups = ["A", "B", "B"]
    a_text, b_text = [0.2, 1, 0], [1, 0.1, 0.05]
    text_emb = np.array([a_text] * 6 + [b_text] * 2, np.float32)
    index = [0] * 6 + [1, 2]
    text_groups = [image_groups[i] for i in index]
    benchmark = geotext_metrics(text_emb, image_emb, text_groups, image_groups)
    paper = geotext_metrics(
        text_emb, image_emb, text_groups, image_groups, protocol="paper", text_image_index=index
    )
    assert paper["protocol"] == "geotext1652-paper"
    assert paper["n_images"] == 8 and paper["n_texts"] == 8
    assert benchmark["text_to_image"] == {"R@1": 0.0, "R@5": 100.0, "R@10": 100.0}
    assert paper["text_to_image"] == {"R@1": 0.0, "R@5": 75.0, "R@10": 100.0}
