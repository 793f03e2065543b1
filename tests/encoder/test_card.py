"""Model cards: every saved folder has a README.md whose YAML front matter states the real model
and run, and which is rewritten when an evaluation adds results."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from geoloc.cli import main
from geoloc.config import Config, save_config
from geoloc.encoder import card
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.tuning import TuningConfig

VAL = {
    "protocol": "full-gallery",
    "n_texts": 80,
    "n_images": 20,
    "text_to_image_R@1": 25.0,
    "text_to_image_R@5": 60.0,
    "image_to_text_R@1": 30.0,
    "primary_metric": "text_to_image_R@1",
}


def _front_matter(folder: Path) -> dict:
    text = (folder / card.CARD).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_city: Path):
    """A LoRA encoder saved as a run's best/, with the run's config.yaml beside it."""
    config = Config()
    config.model.backbone = "tiny-smolvlm"
    config.tuning = TuningConfig(strategy="lora", rank=4, alpha=8.0)
    config.data.train = str(tiny_city)
    config.train.lr = 2e-4
    run_dir = tmp_path_factory.mktemp("run")
    save_config(config, run_dir / "config.yaml")
    encoder = load_encoder(
        "tiny-smolvlm", spec_overrides={"tuning": config.tuning, "pooling": "mean"}, trainable=True
    )
    encoder.save(run_dir / "best")
    return run_dir, config, encoder


def test_card_front_matter_states_the_model_and_run(run) -> None:
    run_dir, config, encoder = run
    folder = run_dir / "best"
    meta = _front_matter(folder)
    assert meta == card.read_front_matter(folder / card.CARD)
    total, trainable = encoder.parameter_counts()
    assert 0 < trainable < total
    assert meta["library_name"] == "geoloc"
    assert "base_model" not in meta  # a tiny random preset stands for no Hub model
    assert {"smolvlm", "tuning-lora", "pooling-mean", "peft"} <= set(meta["tags"])
    assert meta["datasets"] == [str(config.data.train)]
    assert meta["metrics"] == ["text_to_image_R@1"]  # the selection metric, until results come
    assert "model-index" not in meta
    text = (folder / card.CARD).read_text(encoding="utf-8")
    assert f"| parameters, total | {total:,} |" in text
    assert f"| parameters, trainable | {trainable:,} |" in text
    assert f"| embedding dimension | {encoder.embedding_dim} |" in text
    assert "rank 4, alpha 8.0" in text
    recipe = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert recipe == config.to_dict()  # the recipe as trained, whole
    assert "No evaluation results yet" in text
    assert "## Intended use and limits" in text
    facts = json.loads((folder / card.FACTS).read_text())
    assert facts["parameters"] == {"total": total, "trainable": trainable}
    # The folder still loads, and the card is not a weight: the same embeddings.
    assert load_encoder(folder).encode_text(["a pond"]).shape == (1, encoder.embedding_dim)


def test_card_is_regenerated_when_results_are_added(run, tmp_path: Path) -> None:
    run_dir, config, encoder = run
    folder = tmp_path / "best"
    save_config(config, tmp_path / "config.yaml")
    encoder.save(folder)
    save_id = card.card_save_id(folder)
    assert card.record_validation(folder, VAL, step=12)
    assert not card.record_validation(folder, {}, step=13)  # nothing validated: nothing added
    meta = _front_matter(folder)
    [validation] = meta["model-index"][0]["results"]
    assert validation["dataset"] == {
        "name": str(config.data.train),
        "type": str(config.data.train),
        "split": "val",
    }
    assert {m["type"]: m["value"] for m in validation["metrics"]} == {
        "text_to_image_R@1": 25.0,
        "text_to_image_R@5": 60.0,
        "image_to_text_R@1": 30.0,
    }
    assert meta["metrics"] == ["image_to_text_R@1", "text_to_image_R@1", "text_to_image_R@5"]
    assert "step 12" in (folder / card.CARD).read_text()

    test = VAL | {"protocol": "geotext1652", "text_to_image_R@1": 41.5}
    assert card.add_result(folder, card.eval_result(test, "GeoText-1652", "test"), save_id=save_id)
    again = test | {"text_to_image_R@1": 42.0}  # the same evaluation again replaces its result
    assert card.add_result(folder, card.eval_result(again, "GeoText-1652", "test"), save_id=save_id)
    results = _front_matter(folder)["model-index"][0]["results"]
    assert [(r["dataset"]["name"], r["dataset"]["split"]) for r in results] == [
        (str(config.data.train), "val"),
        ("GeoText-1652", "test"),
    ]
    assert results[1]["metrics"][0] == {
        "type": "text_to_image_R@1",
        "value": 42.0,
        "name": "text_to_image_R@1 (geotext1652)",
    }
    text = (folder / card.CARD).read_text()
    assert "### GeoText-1652, split `test`, protocol `geotext1652`" in text and "| 42.00 |" in text
    # The Hub's own parser reads the card: its metadata and every result.
    hub = ModelCard.load(folder / card.CARD)
    assert hub.data.library_name == "geoloc" and hub.data.model_name == "best"
    assert [(r.dataset_name, r.dataset_split, r.metric_type, r.metric_value) for r in hub.data.eval_results][
        -1
    ] == (
        "GeoText-1652",
        "test",
        "image_to_text_R@1",
        30.0,
    )

    encoder.save(folder)  # new weights: no results, and an evaluation of the old ones is refused
    assert "model-index" not in _front_matter(folder)
    assert not card.add_result(folder, card.eval_result(test, "GeoText-1652", "test"), save_id=save_id)
    assert "model-index" not in _front_matter(folder)


def test_geoloc_eval_adds_its_results_to_the_card(run, tiny_city: Path, tmp_path: Path) -> None:
    run_dir, _, _ = run
    out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--data", str(tiny_city), "--split", "test", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    [result] = _front_matter(run_dir / "best")["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    assert "From geoloc eval" in (run_dir / "best" / card.CARD).read_text()
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["text_to_image_R@1"] == metrics["text_to_image_R@1"]
    assert values["image_to_text_R@10"] == metrics["image_to_text_R@10"]


def test_an_export_carries_its_source_recipe_and_trained_counts(run, tmp_path: Path) -> None:
    run_dir, config, encoder = run
    exported = load_encoder(run_dir / "best")  # for inference: nothing requires a gradient
    assert exported.parameter_counts()[1] == 0
    exported.save(tmp_path / "export")
    facts = json.loads((tmp_path / "export" / card.FACTS).read_text())
    assert facts["derived_from"] == str(run_dir / "best")
    assert facts["recipe"] == config.to_dict()
    assert facts["parameters"]["trainable"] == encoder.parameter_counts()[1]
    assert facts["results"] == []  # results belong to the weights that were evaluated
    assert _front_matter(tmp_path / "export")["datasets"] == [str(config.data.train)]


def test_base_model_is_a_hub_id(tmp_path: Path) -> None:
    assert card.base_model_id("HuggingFaceTB/SmolVLM-256M-Instruct") == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert card.base_model_id("tiny-smolvlm") is None
    snapshot = tmp_path / "hub" / "models--OpenGVLab--InternVL3_5-1B-HF" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert card.base_model_id(str(snapshot)) == "OpenGVLab/InternVL3_5-1B-HF"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolVLM-500M-Instruct"}))
    assert card.base_model_id(str(folder)) == "HuggingFaceTB/SmolVLM-500M-Instruct"
    spec = {
        "backbone": "HuggingFaceTB/SmolVLM-256M-Instruct",
        "family": "smolvlm",
        "tuning": {"strategy": "dora"},
    }
    facts = card.new_facts(spec, (256_484_928, 1_000), 576)
    meta = yaml.safe_load(card.render_card(facts, "final").split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert "tuning-dora" in meta["tags"] and "datasets" not in meta  # no run: no training data


def test_a_broken_config_or_source_card_never_stops_a_save(run, tmp_path: Path) -> None:
    run_dir, _, encoder = run
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.warns(UserWarning, match="unreadable training config"):
        encoder.save(tmp_path / "best")
    assert load_encoder(tmp_path / "best").embedding_dim == encoder.embedding_dim
    assert "No training run is recorded" in (tmp_path / "best" / card.CARD).read_text()


def test_a_saved_folder_holds_no_lock_file(run, tmp_path: Path) -> None:
    """Users upload saved folders: the card's lock lives beside the folder, never inside it."""
    _, _, encoder = run
    folder = tmp_path / "best"
    encoder.save(folder)
    (folder / ".model_card.lock").touch()  # left inside by an older geoloc
    results = [card.eval_result(VAL | {"protocol": f"p{i}"}, "GeoText-1652", "test") for i in range(6)]
    threads = [threading.Thread(target=card.add_result, args=(folder, result)) for result in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Concurrent additions are serialised by the lock: none is lost.
    assert len(json.loads((folder / card.FACTS).read_text())["results"]) == len(results)
    assert not [p.name for p in folder.rglob("*") if "lock" in p.name]
    assert card.lock_file(folder) == tmp_path / ".best.model_card.lock"
    assert card.lock_file(folder).is_file()
    assert card.lock_file(tmp_path / "sub" / ".." / "best") == card.lock_file(folder)
