"""Training on the benchmarks' real layouts: records from the TRAIN split, validation carved from
it by building / location, and no test record ever opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from geoloc.cli import main
from geoloc.config import load_config
from geoloc.train.splits import carve_splits


def spoil_geotext_test_side(root: Path) -> set[str]:
    """Corrupt every test image and test annotation file; return the test image ids."""
    ids = {r["image_id"] for r in json.loads((root / "test_951_version.json").read_text())}
    for image in (root / "images" / "test").rglob("*.*"):
        image.write_bytes(b"not an image")
    for name in ("test_951_version.json", "test_24G_version.json"):
        (root / name).write_bytes(b"\xff{ broken")
    return ids


def spoil_cvgtext_test_side(root: Path) -> set[str]:
    """Empty every test tile and corrupt every test.json (both halves of the mixed version)."""
    names: set[str] = set()
    for annotation in root.rglob("test.json"):
        names |= set(json.loads(annotation.read_text()))
        annotation.write_text("{ not json")
    assert names
    for name in names:
        for tile in root.rglob(name):
            tile.write_bytes(b"")
    return names


def benchmark_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "train.yaml"
    config = {
        "model": {"backbone": "tiny-smolvlm"},
        "tuning": {"strategy": "full"},
        "data": data,
        "train": {"max_steps": 2, "batch_size": 4, "progress": False, "device": "cpu", "save_every": 0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_geotext_splits_come_from_train_json_by_building(geotext_root: Path, tmp_path: Path) -> None:
    test_ids = spoil_geotext_test_side(geotext_root)
    train_ids = {r["image_id"] for r in json.loads((geotext_root / "train.json").read_text())}
    config = load_config(
        benchmark_config(
            tmp_path, {"benchmark": "geotext1652", "root": str(geotext_root), "val_fraction": 0.25}
        )
    )
    splits = carve_splits(config)
    train_keys = {r.key for r in splits.train.records}
    val_keys = {r.key for r in splits.val.records}
    assert train_keys | val_keys == train_ids and not (train_keys & val_keys)
    assert not (train_keys | val_keys) & test_ids
    # Validation holds whole buildings: 2 of the 8 (25 %), each with its 4 images.
    val_buildings = {r.group for r in splits.val.records}
    assert len(val_buildings) == 2 and not val_buildings & {r.group for r in splits.train.records}
    assert len(splits.val) == 8
    # Two records of one image are merged: its string captions are both kept.
    merged = next(r for r in splits.train.records + splits.val.records if r.key.endswith("image-01.jpeg"))
    assert len(merged.texts) == 2
    assert splits.skipped == []
    # The carving is seeded: the same seed gives the same buildings, another seed others.
    assert {r.group for r in carve_splits(config).val.records} == val_buildings
    other = load_config(None, [*_flatten(config), "train.seed=5"])
    assert {r.group for r in carve_splits(other).val.records} != val_buildings


def _flatten(config) -> list[str]:
    return [f"data.{k}={v}" for k, v in vars(config.data).items() if v != ""]


@pytest.mark.parametrize("official", [True, False])
def test_cvgtext_splits_come_from_train_json_by_location(
    tmp_path: Path, official: bool, cvgtext_writer
) -> None:
    root = cvgtext_writer(tmp_path / "my_cvg_data", city="Tokyo", official=official)
    train_names = {name for f in root.rglob("train.json") for name in json.loads(f.read_text())}
    test_names = spoil_cvgtext_test_side(root)
    data = {"benchmark": "cvgtext", "root": str(root), "city": "Tokyo", "target": "osm"}
    splits = carve_splits(load_config(benchmark_config(tmp_path, data)))
    train_keys = {r.key for r in splits.train.records}
    val_keys = {r.key for r in splits.val.records}
    assert train_keys | val_keys == train_names and not (train_keys & val_keys)
    assert not (train_keys | val_keys) & test_names
    assert len(val_keys) == 2  # 10 % of 20 locations
    assert all("-OSM" in str(r.image) for r in splits.train.records)
    assert all(r.lat is not None for r in splits.val.records)


def test_manifest_training_never_opens_test_rows(small_city: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "city"
    shutil.copytree(small_city.parent, data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        if row["split"] == "test":
            (data / row["image"]).write_bytes(b"truncated")
    splits = carve_splits(load_config(None, [f"data.train={data}"]))
    assert {r.split for r in splits.train.records} == {"train"}
    assert {r.split for r in splits.val.records} == {"val"}  # the data's own val split
    assert len(splits.train) + len(splits.val) == sum(r["split"] != "test" for r in rows)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"benchmark": "geotext1652"}, "data.root is required"),
        ({"benchmark": "cvgtext", "root": "somewhere"}, "data.city is required"),
        (
            {"benchmark": "geotext1652", "root": "nowhere"},
            "train.json: GeoText-1652 annotation file not found",
        ),
        (
            {"benchmark": "cvgtext", "root": "nowhere", "city": "Paris"},
            "CVG-Text Paris mixed train not found",
        ),
        ({"benchmark": "manifest"}, "no data: set data.train"),
    ],
)
def test_train_refuses_missing_benchmark_data(tmp_path: Path, data: dict, message: str, capsys) -> None:
    data = {k: (str(tmp_path / v) if k == "root" else v) for k, v in data.items()}
    config = benchmark_config(tmp_path, data)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists()  # nothing written


def test_geoloc_train_on_cvgtext(cvgtext_root: Path, tmp_path: Path, capsys) -> None:
    spoil_cvgtext_test_side(cvgtext_root)
    data = {"benchmark": "cvgtext", "root": str(cvgtext_root), "city": "NewYork"}
    run = tmp_path / "run"
    assert main(["train", str(benchmark_config(tmp_path, data)), "--out", str(run)]) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert steps[0]["type"] == "train" and steps[-1]["type"] == "val"
    assert (run / "final" / "geoloc_encoder.json").is_file()


def test_geoloc_train_on_geotext(geotext_root: Path, tmp_path: Path, capsys) -> None:
    spoil_geotext_test_side(geotext_root)
    config = benchmark_config(tmp_path, {"benchmark": "geotext1652", "root": str(geotext_root)})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["benchmark"] == "geotext1652"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert steps[0]["type"] == "train" and steps[-1]["type"] == "val"
    assert (run / "final" / "geoloc_encoder.json").is_file()
    assert not (run / "skipped_records.jsonl").exists()  # only written when skipping


def test_val_fraction_zero_keeps_every_training_record(
    geotext_root: Path, tmp_path: Path, cvgtext_writer
) -> None:
    """`data.val_fraction: 0` (the released recipe): every train.json record trains, nothing is
    held out, and the test side (corrupted here) is never read."""
    test_ids = spoil_geotext_test_side(geotext_root)
    train_ids = {r["image_id"] for r in json.loads((geotext_root / "train.json").read_text())}
    data = {"benchmark": "geotext1652", "root": str(geotext_root), "val_fraction": 0}
    splits = carve_splits(load_config(benchmark_config(tmp_path, data)))
    assert {r.key for r in splits.train.records} == train_ids and not train_ids & test_ids
    assert len(splits.val) == 0
    cvg = cvgtext_writer(tmp_path / "cvg", city="Tokyo")
    train_names = {name for f in cvg.rglob("train.json") for name in json.loads(f.read_text())}
    spoil_cvgtext_test_side(cvg)
    data = {"benchmark": "cvgtext", "root": str(cvg), "city": "Tokyo", "val_fraction": 0}
    splits = carve_splits(load_config(benchmark_config(tmp_path, data)))
    assert {r.key for r in splits.train.records} == train_names and len(splits.val) == 0


def test_geoloc_train_with_val_fraction_zero_trains_on_everything(
    geotext_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """One epoch over every training text, no validation, no best/: the run's model is final/."""
    from geoloc.encoder.saved import saved_encoder_dir
    from geoloc.train.trainer import Trainer

    spoil_geotext_test_side(geotext_root)
    trained: list[str] = []
    original = Trainer.train_step

    def recording_step(self, batch, *inputs):
        trained.extend(self.texts[i] for i in batch)
        return original(self, batch, *inputs)

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    data = {"benchmark": "geotext1652", "root": str(geotext_root), "val_fraction": 0}
    config = benchmark_config(tmp_path, data)
    run = tmp_path / "run"
    overrides = ["--set", "train.max_steps=0", "--set", "train.batch_size=8", "--set", "train.epochs=1"]
    assert main(["train", str(config), "--out", str(run), *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = json.loads((geotext_root / "train.json").read_text())
    assert sorted(trained) == sorted(row["caption"] for row in rows)  # every caption, once
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {line["type"] for line in lines} == {"train"}
    assert result["best_val_r1"] is None and result["final_val"] == {}
    assert not (run / "best").exists() and saved_encoder_dir(run) == run / "final"


def _benchmark_sweep(tmp_path: Path, data: dict) -> Path:
    base = benchmark_config(tmp_path, {**data, "val_fraction": 0.25})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "grid": {"train.lr": [1.0e-3]},
                "metric": "test_t2i_R@1",
                "eval": {"split": "test"},
            }
        )
    )
    return sweep


@pytest.mark.parametrize("benchmark", ["geotext1652", "cvgtext"])
def test_a_sweep_on_a_benchmark_scores_its_test_split_with_its_protocol(
    benchmark: str, geotext_root: Path, cvgtext_root: Path, tmp_path: Path
) -> None:
    """Before: held_out_split read data.train as a manifest, so a benchmark sweep stopped with
    "folder holds no manifest"."""
    from geoloc.data.cvgtext import load_cvgtext
    from geoloc.data.geotext import load_geotext
    from geoloc.study.sweep import held_out_split, load_sweep, run_sweep

    if benchmark == "geotext1652":
        data = {"benchmark": "geotext1652", "root": str(geotext_root)}
        expected = load_geotext(geotext_root, split="test")
    else:
        data = {"benchmark": "cvgtext", "root": str(cvgtext_root), "city": "NewYork"}
        expected = load_cvgtext(cvgtext_root, "NewYork", split="test")
    sweep = load_sweep(_benchmark_sweep(tmp_path, data))
    request, held_out = held_out_split(sweep.points[0].config, "test")
    assert (request.benchmark, request.split) == (benchmark, "test")
    assert [r.key for r in held_out.records] == [r.key for r in expected.records]

    rows = run_sweep(sweep, tmp_path / "out", log=lambda line: None)
    metrics = json.loads(
        (tmp_path / "out" / "runs" / rows[0]["run"] / "eval_test" / "metrics.json").read_text()
    )
    assert metrics["protocol"] == benchmark  # the benchmark's own scoring, not the full gallery
    assert metrics["primary_metric"] == "text_to_image_R@1"
    assert rows[0]["test_t2i_R@1"] == metrics["text_to_image_R@1"]
    if benchmark == "cvgtext":  # text -> image only: per-query galleries of the nearest tiles
        assert "subsets" in metrics and rows[0]["test_i2t_R@1"] is None
    else:
        assert rows[0]["test_mean"] == metrics["mean"]
