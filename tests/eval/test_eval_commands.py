"""`geoloc eval` and `geoloc embed` (eval/commands.py): the outputs users and other tools rely on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geoloc.cli import main


def test_eval_writes_metrics_and_embeddings(small_city: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "tiny-internvl",
            "--data",
            str(small_city),
            "--split",
            "test",
            "--out",
            str(out),
            "--save-embeddings",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "full-gallery"
    assert set(metrics["text_to_image"]) == {"R@1", "R@5", "R@10"} == set(metrics["image_to_text"])
    assert metrics["n_images"] == 20 and metrics["n_texts"] >= 40
    six = list(metrics["text_to_image"].values()) + list(metrics["image_to_text"].values())
    assert metrics["mean"] == pytest.approx(sum(six) / 6)
    data = np.load(out / "embeddings.npz")
    assert data["image_emb"].dtype == np.float32 and data["image_emb"].shape[0] == 20
    assert np.allclose(np.linalg.norm(data["text_emb"], axis=1), 1, atol=1e-5)
    assert len(data["texts"]) == len(data["text_image_keys"]) == data["text_emb"].shape[0]
    assert set(data["text_image_keys"]) <= set(data["image_keys"])
    assert data["image_keys"][0].startswith("tiles/")
    assert "T2I R@1" in capsys.readouterr().out


def _cvgtext_root(root: Path, rng: np.random.Generator) -> None:
    """A CVG-Text city in the official layout: 30 locations, panoramas (`NewYork`) and single-view
    photos (`NewYork-photos`), which together are the mixed version."""
    from PIL import Image

    descriptions: dict[str, dict[str, str]] = {"NewYork": {}, "NewYork-photos": {}}
    for i in range(30):
        lat, lon = 40.70 + rng.uniform(0, 0.01), -74.0 + rng.uniform(0, 0.01)
        version = "NewYork" if i % 2 else "NewYork-photos"
        name = (
            f"{lat:.8f},{lon:.8f}_2022-08_pano{i:03d}_d90_z3.jpg" if i % 2 else f"{lat:.8f},{lon:.8f}_{i}.jpg"
        )
        (root / f"{version}-satellite").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            root / f"{version}-satellite" / name
        )
        descriptions[version][name] = f"a street with a {['red', 'blue', 'white'][i % 3]} building number {i}"
    for version, entries in descriptions.items():
        (root / "CVG-text" / version).mkdir(parents=True)
        (root / "CVG-text" / version / "test.json").write_text(json.dumps(entries))


def test_eval_cvgtext_benchmark(tmp_path: Path) -> None:
    _cvgtext_root(tmp_path / "cvg", np.random.default_rng(0))
    out = tmp_path / "out"
    command = ["eval", "tiny-smolvlm", "--benchmark", "cvgtext", "--root", str(tmp_path / "cvg")]
    command += ["--city", "NewYork"]
    code = main([*command, "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "cvgtext"
    assert set(metrics["subsets"]) == {"all", "panorama", "single_view"}
    assert metrics["subsets"]["all"]["n"] == 30
    assert metrics["subsets"]["panorama"]["n"] == metrics["subsets"]["single_view"]["n"] == 15
    assert set(metrics["subsets"]["all"]) == {
        "R@1",
        "R@5",
        "R@10",
        "L@50",
        "L@100",
        "L@150",
        "mean_error_km",
        "n",
    }
    # 30 tiles, so each query's 100-nearest gallery is the whole city: the full-city variant
    # must agree exactly, and be labelled as such.
    full = tmp_path / "full"
    code = main([*command, "--full-city", "--out", str(full)])
    assert code == 0
    full_metrics = json.loads((full / "metrics.json").read_text())
    assert full_metrics["protocol"] == "cvgtext-full-city"
    assert full_metrics["subsets"] == metrics["subsets"]


def test_benchmark_arguments_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing setting is named as the command line spells it (a config names data.root: the
    same reader, tests/data/test_benchmark_training.py)."""
    assert main(["eval", "tiny-smolvlm", "--benchmark", "cvgtext", "--root", str(tmp_path)]) == 2
    assert "--city is required with benchmark cvgtext" in capsys.readouterr().err
    assert main(["eval", "tiny-smolvlm", "--benchmark", "geotext1652"]) == 2
    assert "--root is required with benchmark geotext1652" in capsys.readouterr().err
    assert main(["eval", "tiny-smolvlm"]) == 2
    assert "no data: set --data to a manifest file" in capsys.readouterr().err
    assert main(["eval", "tiny-smolvlm", "--data", str(tmp_path), "--protocol", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--protocol paper is a GeoText-1652 protocol (--benchmark geotext1652)" in err
    assert "data." not in err


def test_eval_twice_uses_the_cache(small_city: Path, tmp_path: Path, capsys) -> None:
    args = ["eval", "tiny-smolvlm", "--data", str(small_city), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "from the cache" not in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "from the cache" in capsys.readouterr().out
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first["text_to_image"] == second["text_to_image"] and first["mean"] == second["mean"]


def test_eval_on_a_manifest_without_splits_says_how_to_score_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "texts": ["a red roof"]}\n')
    assert main(["eval", "tiny-smolvlm", "--data", str(tmp_path), "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err
    assert "no records in split 'test'" in error and "`--split all` scores every row" in error
    assert len(error.strip().splitlines()) == 1


def test_embed_skips_and_lists_a_bad_tile(
    tiny_city: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """train, eval, embed and index build list skipped records through one helper (verify_and_list)."""
    data = tmp_path / "city"
    shutil.copytree(tiny_city.parent, data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    (data / rows[0]["image"]).write_bytes(b"not a png")
    out = tmp_path / "emb"
    args = ["embed", "tiny-smolvlm", "--data", str(data), "--out", str(out), "--on-bad-record", "skip"]
    assert main([*args, "--quiet", "--device", "cpu"]) == 0
    listed = [json.loads(line) for line in (out / "skipped_records.jsonl").read_text().splitlines()]
    assert [e["record"] for e in listed] == [f"image {rows[0]['image']}"]
    assert "skipped 1 bad record(s)" in capsys.readouterr().err
    assert len(np.load(out / "embeddings.npz")["image_keys"]) == len(rows) - 1
