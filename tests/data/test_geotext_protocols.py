"""The three GeoText-1652 protocols on fixture trees in the real layout, against naive references.

Each reference below is written from the protocols' descriptions (docs/benchmarks.md), straight
from the JSON file, one query at a time:

- benchmark: one gallery row per image (records sharing an image_id are one image), buildings;
- official-quirks: the official itm_eval: one gallery row per RECORD in file order, labels off
  by one at each building change, each caption labelled by its record;
- paper: the paper's eva_compute.py: one gallery row per caption, buildings.

geoloc's side reads the tree with its loader and scores through `score_benchmark`, as
`geoloc eval` does; the embeddings are fixed vectors per image id and per caption.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoloc.cli import main
from geoloc.data.geotext import geotext_record_layout, load_geotext
from geoloc.eval.benchmarks import BenchmarkRequest, score_benchmark
from geoloc.eval.evaluate import Embeddings
from geoloc.eval.protocols import geotext_metrics

KS = (1, 5, 10)
TEST_FILE = "test_951_version.json"


# --- the naive references --------------------------------------------------------------------------


def naive_records(root: Path) -> list[tuple[str, str, list[str]]]:
    """(image_id, building, captions) of every test record, in file order."""
    rows = json.loads((root / TEST_FILE).read_text())
    out = []
    for row in rows:
        captions = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        out.append((row["image_id"], row["image_id"][:4], list(captions)))
    return out


def naive_off_by_one(buildings: list[str]) -> list[int]:
    """The official labels: the counter moves on only AFTER labelling the first image of a new
    building, which so keeps the previous building's label."""
    labels, label, previous = [], 0, buildings[0]
    for building in buildings:
        if building != previous:
            labels.append(label)
            label += 1
            previous = building
        else:
            labels.append(label)
    return labels


def naive_recalls(queries, query_labels, gallery, gallery_labels) -> dict[str, float]:
    """R@K from each query's sorted gallery. Exact ties go in the query's favour (correct items
    first among equal scores), as everywhere in geoloc: a repeated image id makes them, since its
    copies share one embedding. The official code's order among equal scores is that of its
    unstable sort, and its copies come from separate forward passes: no rule reproduces it."""
    scores = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    ranks = []
    for q, label in enumerate(query_labels):
        wrong = np.array([g != label for g in gallery_labels])
        order = np.lexsort((wrong, -scores[q]))
        ranks.append(int(np.flatnonzero(~wrong[order])[0]))
    ranks = np.array(ranks)
    return {f"R@{k}": 100.0 * float(np.mean(ranks < k)) for k in KS}


def naive_protocol(records, image_vec, text_vec, protocol: str) -> dict[str, object]:
    texts, text_labels, gallery, gallery_labels = [], [], [], []
    if protocol == "benchmark":
        seen: set[str] = set()
        for image_id, building, captions in records:
            if image_id not in seen:
                seen.add(image_id)
                gallery.append(image_vec[image_id])
                gallery_labels.append(building)
            texts += [text_vec[c] for c in captions]
            text_labels += [building] * len(captions)
    elif protocol == "official-quirks":
        labels = naive_off_by_one([building for _, building, _ in records])
        for (image_id, _, captions), label in zip(records, labels, strict=True):
            gallery.append(image_vec[image_id])
            gallery_labels.append(label)
            texts += [text_vec[c] for c in captions]
            text_labels += [label] * len(captions)
    else:  # paper: a gallery row for every caption
        for image_id, building, captions in records:
            for caption in captions:
                gallery.append(image_vec[image_id])
                gallery_labels.append(building)
                texts.append(text_vec[caption])
                text_labels.append(building)
    t2i = naive_recalls(texts, text_labels, gallery, gallery_labels)
    i2t = naive_recalls(gallery, gallery_labels, texts, text_labels)
    return {
        "text_to_image": t2i,
        "image_to_text": i2t,
        "mean": float(np.mean([*t2i.values(), *i2t.values()])),
    }


# --- fixtures --------------------------------------------------------------------------------------


def vectors(records, seed: int, dim: int = 16) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A unit vector per image id and per caption: its building's direction plus noise, so that
    recalls are neither 0 nor 100."""
    rng = np.random.default_rng(seed)
    centres: dict[str, np.ndarray] = {}
    image_vec: dict[str, np.ndarray] = {}
    text_vec: dict[str, np.ndarray] = {}

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    for image_id, building, captions in records:
        centre = centres.setdefault(building, rng.standard_normal(dim))
        if image_id not in image_vec:
            image_vec[image_id] = unit(centre + 1.2 * rng.standard_normal(dim))
        for caption in captions:
            text_vec[caption] = unit(centre + 1.5 * rng.standard_normal(dim))
    return image_vec, text_vec


def repeat_an_image_id(root: Path) -> str:
    """Add a second record for one test image, with its own captions, at the end of the file
    (after other buildings), as the official file may hold. Returns its image_id."""
    rows = json.loads((root / TEST_FILE).read_text())
    first = next(r for r in rows if r["image_id"].endswith("image-01.jpeg"))
    rows.append({**first, "caption": [f"{first['caption'][0]} -- described again, {n}" for n in range(3)]})
    (root / TEST_FILE).write_text(json.dumps(rows))
    return first["image_id"]


def geoloc_protocol(root: Path, image_vec, text_vec, protocol: str) -> dict[str, object]:
    dataset = load_geotext(root, split="test")
    texts, image_index = dataset.texts_with_image_index()
    keys = [r.key for r in dataset.records]
    embeddings = Embeddings(
        image_emb=np.stack([image_vec[k] for k in keys]),
        text_emb=np.stack([text_vec[t] for t in texts]),
        image_keys=keys,
        text_image_keys=[keys[i] for i in image_index],
        texts=texts,
    )
    request = BenchmarkRequest(benchmark="geotext1652", root=str(root), protocol=protocol)
    return score_benchmark(request, embeddings, dataset)


def assert_same_recalls(got: dict, expected: dict) -> None:
    for direction in ("text_to_image", "image_to_text"):
        assert got[direction] == pytest.approx(expected[direction], abs=1e-9), direction
    assert got["mean"] == pytest.approx(expected["mean"], abs=1e-9)


# --- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("repeated_id", [False, True])
def test_three_protocols_match_naive_references(
    tmp_path: Path, seed: int, repeated_id: bool, geotext_writer
) -> None:
    root = geotext_writer(tmp_path / "GeoText1652", train_buildings=2, test_buildings=12, seed=seed)
    if repeated_id:
        repeat_an_image_id(root)
    records = naive_records(root)
    image_vec, text_vec = vectors(records, seed)
    results = {}
    for protocol, label in (
        ("benchmark", "geotext1652"),
        ("official-quirks", "geotext1652-official-quirks"),
        ("paper", "geotext1652-paper"),
    ):
        got = geoloc_protocol(root, image_vec, text_vec, protocol)
        assert got["protocol"] == label
        assert_same_recalls(got, naive_protocol(records, image_vec, text_vec, protocol))
        results[protocol] = got
    # The paper's text -> image R@1 is the benchmark's; its R@5 cannot be higher (copies of one
    # wrong image take several of the first places), and is lower on these trees.
    benchmark, paper = results["benchmark"], results["paper"]
    assert paper["text_to_image"]["R@1"] == benchmark["text_to_image"]["R@1"]
    assert paper["text_to_image"]["R@5"] < benchmark["text_to_image"]["R@5"]
    assert paper["n_images"] == benchmark["n_texts"]  # one gallery row per caption
    n_records = len(records)
    assert results["official-quirks"]["n_images"] == n_records
    assert benchmark["n_images"] == n_records - int(repeated_id)


def test_repeated_image_id_one_gallery_row_per_record(tmp_path: Path, geotext_writer) -> None:
    """With a repeated image_id the official code keeps one gallery image per record: geoloc's
    official-quirks does too, and merging the two records into one image gives other numbers."""
    root = geotext_writer(tmp_path / "GeoText1652", train_buildings=2, test_buildings=12, seed=0)
    image_id = repeat_an_image_id(root)
    dataset = load_geotext(root, split="test")
    record_images, text_records = geotext_record_layout(dataset)
    position = [r.key for r in dataset.records].index(image_id)
    assert record_images.count(position) == 2  # the image is in the official gallery twice
    assert len(record_images) == len(dataset) + 1
    texts, image_index = dataset.texts_with_image_index()
    assert len(text_records) == len(texts)
    assert [record_images[r] for r in text_records] == image_index
    # Its six captions: the first record's three, then the appended record's three.
    own = [r for r, i in zip(text_records, image_index, strict=True) if i == position]
    assert own == [own[0]] * 3 + [len(record_images) - 1] * 3

    records = naive_records(root)
    image_vec, text_vec = vectors(records, 0)
    official = geoloc_protocol(root, image_vec, text_vec, "official-quirks")
    assert_same_recalls(official, naive_protocol(records, image_vec, text_vec, "official-quirks"))
    # The merged view (one row per image), with the same off-by-one labels, differs here.
    keys = [r.key for r in dataset.records]
    groups = dataset.groups
    merged = geotext_metrics(
        np.stack([text_vec[t] for t in texts]),
        np.stack([image_vec[k] for k in keys]),
        [groups[i] for i in image_index],
        groups,
        protocol="official-quirks",
        text_image_index=image_index,
    )
    assert merged["mean"] != pytest.approx(official["mean"], abs=1e-6)


def test_record_layout_follows_the_loaded_view(tmp_path: Path, geotext_writer) -> None:
    """With --view satellite only satellite images are in the data set: the official gallery
    keeps their records only, and each text still maps to its own image."""
    root = geotext_writer(tmp_path / "GeoText1652", train_buildings=2, test_buildings=4)
    dataset = load_geotext(root, split="test", view="satellite")
    record_images, text_records = geotext_record_layout(dataset)
    assert sorted(record_images) == list(range(len(dataset)))
    _, image_index = dataset.texts_with_image_index()
    assert [record_images[r] for r in text_records] == image_index


def test_eval_command_paper_protocol_and_templates(tmp_path: Path, geotext_writer) -> None:
    """geoloc eval --protocol paper, with the released evaluation's template prefix: the metrics
    name both, and equal the naive reference on the saved embeddings."""
    root = geotext_writer(tmp_path / "GeoText1652", train_buildings=2, test_buildings=4)
    out = tmp_path / "out"
    command = ["eval", "tiny-smolvlm", "--benchmark", "geotext1652", "--root", str(root), "--no-cache"]
    command += ["--protocol", "paper", "--text-template", "<|endoftext|>{text}"]
    command += ["--image-template", "<|endoftext|>{image}", "--save-embeddings", "--out", str(out)]
    assert main(command) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "geotext1652-paper"
    assert metrics["templates"] == {"text": "<|endoftext|>{text}", "image": "<|endoftext|>{image}"}
    stored = np.load(out / "embeddings.npz")
    image_vec = dict(zip(stored["image_keys"].tolist(), stored["image_emb"], strict=True))
    text_vec = dict(zip(stored["texts"].tolist(), stored["text_emb"], strict=True))
    assert_same_recalls(metrics, naive_protocol(naive_records(root), image_vec, text_vec, "paper"))


def test_protocol_flags_are_checked(tmp_path: Path, capsys, geotext_writer) -> None:
    root = geotext_writer(tmp_path / "GeoText1652", train_buildings=2, test_buildings=2)
    base = ["eval", "tiny-smolvlm", "--benchmark", "geotext1652", "--root", str(root), "--no-cache"]
    assert main([*base, "--official-quirks", "--protocol", "paper", "--out", str(tmp_path / "a")]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main([*base, "--text-template", "no slot", "--out", str(tmp_path / "b")]) == 2
    assert "must contain {text} exactly once" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "metrics.json").exists()
