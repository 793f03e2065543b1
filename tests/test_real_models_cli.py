"""The commands a user runs, on model folders that look like the real downloads.

Each shipped paper / released config trains for 2 steps on the folder of its backbone (the real
config, tokenizer and processor files, random weights in 2 layers per tower), on data in its
benchmark's real layout. Then, on each folder: `geoloc eval`, `geoloc index build` and
`geoloc search --rerank`, with the model folder named by a relative path, as users type it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from benchmark_trees import write_cvgtext_tree, write_geotext_tree
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from geoloc.cli import main
from geoloc.config import load_config
from geoloc.encoder.model_files import REAL_MODELS

CONFIGS = Path(__file__).parents[1] / "configs"
# Every paper config, and one released-recipe variant (the others differ from it only in the
# backbone and data, which the paper configs cover; tests/train/test_trainer_released_recipe.py checks
# their switches): a real-width training step costs seconds, and this suite runs twice.
RECIPES = sorted(p.name for p in CONFIGS.glob("paper-*.yaml")) + ["released-smolvlm-256m-geotext1652.yaml"]
FOLDER_OF_ID = {hub_id: name for name, hub_id in REAL_MODELS.items()}


@pytest.fixture(scope="module")
def benchmark_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("benchmarks")
    return {
        "geotext1652": write_geotext_tree(root / "GeoText1652", train_buildings=4, test_buildings=2),
        "cvgtext": write_cvgtext_tree(root / "CVG-Text", n_train=8, n_test=4),
    }


def test_every_recipe_is_covered() -> None:
    assert len(RECIPES) == 10
    shipped = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(("paper-", "released-")))
    backbones = {load_config(CONFIGS / name).model.backbone for name in shipped}
    assert backbones <= set(FOLDER_OF_ID), backbones  # every recipe's backbone has its real files here


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_trains_two_steps_on_its_real_folder(
    recipe: str, real_model, tiny_city: Path, benchmark_roots: dict[str, Path], tmp_path: Path, capsys
) -> None:
    config = load_config(CONFIGS / recipe)  # as the trainer reads it: its base resolved
    folder = real_model(FOLDER_OF_ID[config.model.backbone])
    benchmark = config.data.benchmark
    where = (
        [f"data.root={benchmark_roots[benchmark]}"]
        if benchmark in benchmark_roots
        else [f"data.train={tiny_city}"]
    )
    overrides = [
        f"model.backbone={folder}",
        *where,
        "data.max_val_images=2",
        "train.max_steps=2",
        "train.batch_size=2",
        # bfloat16 weights and steps: this CPU runs them at about twice the float32 rate, and the
        # float32 path is what every other training test takes.
        "model.dtype=bfloat16",
        "train.precision=bfloat16",
        "train.progress=false",
    ]
    code = main(["train", str(CONFIGS / recipe), "--out", str(tmp_path / "run"), *_sets(overrides)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    spec = json.loads((final / "geoloc_encoder.json").read_text())
    assert spec["tuning"]["strategy"] == config.tuning.strategy


def _sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_eval_index_and_reranked_search_with_a_relative_folder(
    name: str, real_model, tiny_city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / "S").symlink_to(real_model(name), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    bf16 = ["--dtype", "bfloat16"]  # about twice the float32 rate on this CPU
    assert main(["eval", "S", "--data", str(tiny_city), "--split", "test", "--out", "eval", *bf16]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] > 0 and 0 <= metrics["text_to_image"]["R@1"] <= 100
    build = ["index", "build", "S", "--gallery", str(tiny_city), "--split", "test", "--out", "idx", *bf16]
    assert main(build) == 0
    capsys.readouterr()
    # The index names the folder "S" was at build time; a search from elsewhere still finds it
    # and recognises it as the same model.
    monkeypatch.chdir(os.sep)
    query = "a red building with trees"
    assert main(["search", str(tmp_path / "idx"), query, "-k", "3", "--json"]) == 0, capsys.readouterr().err
    plain = json.loads(capsys.readouterr().out)
    assert main(["search", str(tmp_path / "idx"), query, "-k", "3", "--rerank", "--json"]) == 0
    reranked = json.loads(capsys.readouterr().out)
    keys = sorted(hit["key"] for hit in _hits(plain))
    assert (
        len(keys) == 3 and sorted(hit["key"] for hit in _hits(reranked)) == keys
    )  # the same tiles, re-ordered


def _hits(answer: dict) -> list[dict]:
    return answer["results"]
