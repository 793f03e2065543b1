"""Sweeps: grid expansion, run folders, the results table, and resuming after an interruption."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from geoloc.cli import main
from geoloc.encoder.card import read_front_matter
from geoloc.encoder.saved import saved_encoder_dir
from geoloc.errors import ConfigError, GeolocError
from geoloc.study import sweep as sweep_module
from geoloc.study.sweep import load_sweep, run_point

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sweep_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_grid_and_points_expand_to_one_config_per_run(tmp_path: Path) -> None:
    path = _sweep_file(
        tmp_path,
        {
            "base": str(CONFIGS / "synthetic-tiny.yaml"),
            "set": {"train.max_steps": 7},
            "grid": {"tuning.rank": [4, 8], "model.pooling": ["eos", "mean", "query"]},
            "points": [
                {"name": "lora", "tuning.strategy": "lora"},
                {"tuning.strategy": "dora", "loss.temperature": 0.02},
            ],
        },
    )
    sweep = load_sweep(path, overrides=["train.lr=0.002"])
    assert len(sweep.points) == 2 * 3 * 2
    names = [p.name for p in sweep.points]
    assert names[0] == "rank=4__pooling=eos__lora"
    assert "rank=8__pooling=query__strategy=dora__temperature=0.02" in names
    assert len(set(names)) == len(names)
    point = sweep.points[-1]
    config = point.config
    assert (config.tuning.rank, config.model.pooling, config.tuning.strategy) == (8, "query", "dora")
    assert config.loss.temperature == pytest.approx(0.02)
    assert config.train.max_steps == 7 and config.train.lr == pytest.approx(0.002)  # set, then --set
    assert config.model.backbone == "tiny-smolvlm"  # from the base config
    assert sweep.keys == ["tuning.rank", "model.pooling", "tuning.strategy", "loss.temperature"]
    assert sweep.metric == "test_t2i_R@1"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"tuning.rnak": [4, 8]}}, r"run rnak=4\).*unknown key\(s\) rnak"),
        ({"grid": {"tuning.rank": []}}, "needs a non-empty list"),
        ({"set": {"train.max_steps": 3}}, "nothing to vary"),
        ({"grid": {"tuning.rank": [4]}, "metric": "accuracy"}, "unknown metric 'accuracy'"),
        ({"grid": {"tuning.rank": [4]}, "gird": {}}, "unknown key"),
        ({"grid": {"model.backbone": ["a/b", "a b"]}}, "share the folder 'backbone=a-b'"),
        ({"grid": {"tuning.rank": ["four"]}}, "expected int"),
    ],
)
def test_bad_sweep_files_are_refused_naming_the_file(tmp_path: Path, spec: dict, message: str) -> None:
    path = _sweep_file(tmp_path, spec)
    with pytest.raises(ConfigError, match=message) as error:
        load_sweep(path)
    assert str(path) in str(error.value)


def test_the_command_lists_the_runs_and_reports_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, make_sweep_file: Any
) -> None:
    path = make_sweep_file(tmp_path, tmp_path / "no-city")
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "direction=text_to_image" in printed and "direction=symmetric" in printed and "2 runs" in printed
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_an_interrupted_sweep_resumes_where_it_stopped(resumed_sweep: dict) -> None:
    seen = resumed_sweep
    first, second = (p.name for p in seen["sweep"].points)
    # The first invocation stopped inside the second run, with a checkpoint and no final model.
    assert seen["interrupted"]
    after = seen["after_interrupt"]
    assert after["first_result"] and after["second_checkpoint"] and not after["second_final"]
    assert "1 of 2 runs finished" in after["table"] and first in after["table"]
    # The second invocation skipped the finished run and continued the other from step 3.
    assert f"{first}: done before, skipped" in seen["second_log"]
    assert f"{second}: resuming from its checkpoint" in seen["second_log"]
    assert seen["steps_run"] == [(second, 3), (second, 4)]
    out = seen["out"]
    assert (out / "runs" / first / "result.json").stat().st_mtime_ns == after["first_result_mtime"]
    records = [
        json.loads(line) for line in (out / "runs" / second / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]


def test_the_results_table_csv_and_plot(resumed_sweep: dict) -> None:
    out, rows = resumed_sweep["out"], resumed_sweep["rows"]
    assert [r["run"] for r in rows] == [p.name for p in resumed_sweep["sweep"].points]
    table = (out / "results.md").read_text()
    assert "2 of 2 runs finished" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header + 2 runs
    assert sum("**" in line for line in lines) == 1  # one best run
    parsed = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["loss.direction"] for r in parsed] == ["text_to_image", "symmetric"]
    for row, result in zip(parsed, rows, strict=True):
        test = json.loads((out / "runs" / row["run"] / "eval_test" / "metrics.json").read_text())
        assert float(row["test_t2i_R@1"]) == pytest.approx(test["text_to_image"]["R@1"])
        # ... and on the model card of the run's model, with its split and protocol.
        card = saved_encoder_dir(out / "runs" / row["run"]) / "README.md"
        results = read_front_matter(card)["model-index"][0]["results"]
        held_out = [r for r in results if r["dataset"]["split"] == "test"]
        assert len(held_out) == 1 and "From geoloc sweep" in card.read_text()
        assert {m["type"]: m["value"] for m in held_out[0]["metrics"]}["text_to_image_R@1"] == pytest.approx(
            test["text_to_image"]["R@1"]
        )
        best = json.loads((out / "runs" / row["run"] / "best.json").read_text())
        assert float(row["val_t2i_R@1"]) == pytest.approx(best["text_to_image"]["R@1"])
        assert int(row["steps"]) == 4 and int(row["trainable_params"]) == int(row["total_params"]) > 0
        assert result["test_t2i_R@1"] == pytest.approx(float(row["test_t2i_R@1"]))
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_sweep_trains_nothing_again(resumed_sweep: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("geoloc.train.trainer.train", no_training)
    log: list[str] = []
    rows = sweep_module.run_sweep(resumed_sweep["sweep"], resumed_sweep["out"], log=log.append)
    assert len(rows) == 2 and sum("skipped" in line for line in log) == 2


def test_a_run_folder_made_otherwise_is_refused(resumed_sweep: dict, tmp_path: Path) -> None:
    sweep = resumed_sweep["sweep"]
    point = sweep.points[0]
    stranger = tmp_path / "by-hand"
    stranger.mkdir()
    with pytest.raises(GeolocError, match="not made by a sweep"):
        run_point(sweep, point, stranger, log=lambda _: None)
    other = sweep.points[1]  # the other point's folder holds another config
    with pytest.raises(GeolocError, match="another config"):
        run_point(sweep, point, resumed_sweep["out"] / "runs" / other.name, log=lambda _: None)


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_resolves(path: Path) -> None:
    sweep = load_sweep(path)
    assert len(sweep.points) >= 2 and sweep.keys
    assert all(re.fullmatch(r"[A-Za-z0-9._+=-]+", p.name) for p in sweep.points)  # safe folder names
