"""Ablation sweeps: a grid over config keys, one training run per point, one results table.

A sweep file (YAML):

    base: ../synthetic-tiny.yaml          # a training config, relative to this file (optional)
    set:  {train.max_steps: 120}          # fixed overrides for every run (optional)
    grid:                                 # every combination of these values is one run
      model.backbone: [tiny-smolvlm, tiny-clip]
      loss.direction: [text_to_image, symmetric]
    points:                               # optional: one more axis whose values set several keys
      - {name: dora-r16, tuning.strategy: dora, tuning.rank: 16}
    metric: test_t2i_R@1                  # the column the plot shows and the best run is chosen by;
                                          # test_t2i_R@1 is the held-out primary metric
    eval: {split: test, batch_size: 32}   # held-out scoring of each run's best model; false = none

The output folder holds `runs/<point name>/` (an ordinary training run directory, readable by
`geoloc eval` and `geoloc report`), `results.md`, `results.csv` and `results.png`. The table is
rewritten after every run, so it grows while the sweep goes.

Rerunning the same command resumes: a run with a result is skipped, a run interrupted after a
checkpoint continues through the trainer's own resume (exactly where it stopped), a run
interrupted before its first checkpoint starts again. A run folder made with a different config
is refused rather than mixed with the new one.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geoloc import atomic
from geoloc.config import Config, config_from_dict, read_config_data
from geoloc.errors import ConfigError, GeolocError

SWEEP_FILE = "sweep.json"  # written in the output folder: marks it as a sweep for `geoloc report`
POINT_FILE = "sweep_point.json"  # in each run folder: the point and its resolved config
RESULT_FILE = "result.json"  # in each run folder once it is trained and scored
RUNS = "runs"
TOP_KEYS = ("base", "set", "grid", "points", "metric", "eval", "name")

# Result columns, in table order: (column, header in the Markdown table).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val_t2i_R@1", "val R@1"),
    ("test_t2i_R@1", "T2I R@1"),
    ("test_t2i_R@5", "T2I R@5"),
    ("test_t2i_R@10", "T2I R@10"),
    ("test_i2t_R@1", "I2T R@1"),
    ("test_mean", "mean"),
)
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("trainable_params", "trainable"),
    ("total_params", "total"),
    ("steps", "steps"),
    ("train_minutes", "minutes"),
    ("pairs_per_s", "pairs/s"),
)


@dataclass
class SweepPoint:
    name: str  # the run folder's name, e.g. "backbone=tiny-clip__direction=symmetric"
    values: dict[str, Any]  # the keys this point varies, as written in the sweep file
    config: Config


@dataclass
class Sweep:
    path: Path
    name: str
    points: list[SweepPoint]
    keys: list[str]  # every varied key, in the order of first appearance
    metric: str
    eval_split: str | None
    eval_batch_size: int = 32
    overrides: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sweep_file": str(self.path),
            "metric": self.metric,
            "keys": self.keys,
            "eval_split": self.eval_split,
            "overrides": self.overrides,
            "points": [{"name": p.name, "values": p.values} for p in self.points],
        }


# -- reading a sweep file ------------------------------------------------------------------------
def _set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a config section")
    node[parts[-1]] = value


def _format_value(value: Any) -> str:
    """A value as it reads in a folder name: no slashes, no spaces."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "empty"


def _short_names(keys: list[str]) -> dict[str, str]:
    """`tuning.rank` -> `rank`, unless two keys share their last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error.strerror})") from error
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: invalid {what} ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _axes(spec: dict[str, Any], where: str) -> list[list[dict[str, Any]]]:
    """The sweep's axes; each is a list of {key: value} choices. Their product is the runs."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: 'grid' must map config keys to lists of values")
    axes: list[list[dict[str, Any]]] = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key {key!r} needs a non-empty list of values")
        axes.append([{str(key): v} for v in values])
    points = spec.get("points")
    if points is not None:
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p for p in points):
            raise ConfigError(f"{where}: 'points' must be a non-empty list of mappings of config keys")
        axes.append([{str(k): v for k, v in p.items()} for p in points])
    if not axes:
        raise ConfigError(f"{where}: a sweep needs a 'grid' or 'points' (nothing to vary)")
    return axes


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file and resolve every point's config (all checked before anything runs)."""
    path = Path(path)
    spec = _read_yaml(path, "sweep file")
    unknown = sorted(set(spec) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}")
    base: dict[str, Any] = {}
    if spec.get("base"):  # a training config, itself perhaps extending another
        base = read_config_data(path.parent / str(spec["base"]))
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: 'set' must map config keys to values")
    eval_split, eval_batch = _eval_settings(spec.get("eval", {"split": "test"}), path)
    axes = _axes(spec, str(path))
    keys = list(dict.fromkeys(k for axis in axes for choice in axis for k in choice if k != "name"))
    points = _points(path, axes, keys, base, fixed, overrides)
    metric = _metric(spec, eval_split, path)
    name = str(spec.get("name") or path.stem)
    return Sweep(path, name, points, keys, metric, eval_split, eval_batch, list(overrides or []))


def _eval_settings(evaluation: Any, path: Path) -> tuple[str | None, int]:
    """The sweep's 'eval': (the split each run is scored on, or None for none; the batch size)."""
    if evaluation is False or evaluation is None:
        return None, 32
    if isinstance(evaluation, dict) and set(evaluation) <= {"split", "batch_size"}:
        return str(evaluation.get("split", "test")), int(evaluation.get("batch_size", 32))
    raise ConfigError(f"{path}: 'eval' must be false or a mapping with 'split' and 'batch_size'")


def _points(
    path: Path,
    axes: list[list[dict[str, Any]]],
    keys: list[str],
    base: dict[str, Any],
    fixed: dict[str, Any],
    overrides: list[str] | None,
) -> list[SweepPoint]:
    """One point per combination of the axes' choices, each with its config resolved and checked.

    Every point's folder is named after it, so two points with one name are refused here, before
    anything runs, rather than the second overwriting the first.
    """
    short = _short_names(keys)
    points: list[SweepPoint] = []
    for combo in itertools.product(*axes):
        values: dict[str, Any] = {}
        for choice in combo:
            values.update({k: v for k, v in choice.items() if k != "name"})
        name = "__".join(_choice_name(choice, short) for choice in combo)
        points.append(
            SweepPoint(name, values, _point_config(path, name, base, {**fixed, **values}, overrides))
        )
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: two runs would share the folder {duplicates[0]!r}; give the points names")
    return points


def _choice_name(choice: dict[str, Any], short: dict[str, str]) -> str:
    """One choice's part of a run folder's name: its own 'name', else its settings as key=value."""
    named = choice.get("name")
    if named is not None:
        return _format_value(named)
    return "__".join(f"{short[k]}={_format_value(v)}" for k, v in choice.items() if k != "name")


def _point_config(
    path: Path, name: str, base: dict[str, Any], settings: dict[str, Any], overrides: list[str] | None
) -> Config:
    """The base config with a point's settings, then the command line's overrides; errors name the run."""
    data = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    where = f"{path} (run {name})"
    for key, value in settings.items():
        _set_dotted(data, str(key), value, where)
    try:
        return config_from_dict(data, overrides)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _metric(spec: dict[str, Any], eval_split: str | None, path: Path) -> str:
    """The column runs are ranked by: the sweep's 'metric', else R@1 on the split the runs are scored on."""
    metric = str(spec.get("metric") or ("test_t2i_R@1" if eval_split else "val_t2i_R@1"))
    known_metrics = [c for c, _ in METRIC_COLUMNS + RUN_COLUMNS]
    if metric not in known_metrics:
        raise ConfigError(f"{path}: unknown metric {metric!r}; choose one of: {', '.join(known_metrics)}")
    return metric


# -- running -------------------------------------------------------------------------------------
def _zero_shot(config: Config) -> bool:
    """A frozen backbone with a parameter-free pooling has nothing to train: it is only scored."""
    return config.tuning.strategy == "frozen" and config.model.pooling != "query"


def _check_run_dir(point: SweepPoint, run_dir: Path) -> None:
    """Refuse a run folder that is not this point's: made by hand, or with another config."""
    marker = run_dir / POINT_FILE
    if not marker.is_file():
        raise GeolocError(f"{run_dir} exists but was not made by a sweep; move it away or choose --out")
    try:
        stored = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{marker}: unreadable ({error}); move the run folder away") from error
    try:  # through the config reader, so that keys a newer geoloc added take their defaults
        same = config_from_dict(stored.get("config") or {}).to_dict() == point.config.to_dict()
    except ConfigError:
        same = False
    if not same:
        raise GeolocError(
            f"{run_dir} was trained with another config than the sweep now asks for; "
            "move it away or choose another --out"
        )


def _encoder_overrides(config: Config) -> dict[str, Any]:
    """The encoder settings a config names, as the trainer passes them."""
    return config.model.embedding_settings() | {"tuning": config.tuning}


def _score_zero_shot(config: Config, run_dir: Path) -> None:
    """Save the untrained encoder as the run's best/final model, with its validation recall."""
    from geoloc.config import save_config
    from geoloc.encoder.card import record_validation
    from geoloc.encoder.loading import load_encoder
    from geoloc.eval.evaluate import evaluate
    from geoloc.train.splits import carve_splits

    encoder = load_encoder(
        config.model.backbone,
        device=config.train.device,
        dtype=config.model.dtype,
        spec_overrides=_encoder_overrides(config),
    )
    metrics, _ = evaluate(encoder, carve_splits(config).val, batch_size=64, show_progress=False)
    save_config(config, run_dir / "config.yaml")
    atomic.write_json(run_dir / "best.json", {"step": 0, **metrics})
    encoder.save(run_dir / "final")
    record_validation(run_dir / "final", metrics, step=0, source="zero-shot validation (geoloc sweep)")


def _add_to_card(run_dir: Path, request: Any, metrics: dict[str, Any], data: str, split: str) -> None:
    """The held-out result, on the model card of the run's model (best/, else final/)."""
    from geoloc.encoder import card
    from geoloc.encoder.saved import saved_encoder_dir

    folder = saved_encoder_dir(run_dir)
    if folder is not None:
        name = card.dataset_name(request.benchmark, data, **request.subset())
        card.add_result(folder, card.eval_result(metrics, name, split, source="geoloc sweep"))


def _train_stats(run_dir: Path) -> dict[str, Any]:
    """Steps, minutes and throughput of a finished run, from its own records."""
    from geoloc.train.state import read_train_state
    from geoloc.train.trainer import CHECKPOINT, TRAINER_STATE

    stats: dict[str, Any] = {"steps": 0, "train_minutes": 0.0, "pairs_per_s": None}
    if (run_dir / CHECKPOINT / TRAINER_STATE).is_file():
        state = read_train_state(run_dir / CHECKPOINT)
        stats["steps"] = state.step
        stats["train_minutes"] = round(state.elapsed_s / 60, 2)
    rates = [r["pairs_per_s"] for r in read_metrics(run_dir) if r.get("type") == "train" and r["step"] > 1]
    if rates:
        stats["pairs_per_s"] = round(statistics.median(rates), 1)
    return stats


def held_out_split(config: Config, split: str) -> tuple[Any, Any] | None:
    """(request, records) of `split` in the config's data, or None when a manifest has none.

    Read by the reader training used: a manifest's rows of that split, or the benchmark's own
    split files (GeoText-1652's test_951_version.json, CVG-Text's test.json); `request` scores
    them with the benchmark's protocol (`score_benchmark`).
    """
    from geoloc.data.manifest import Dataset, read_manifest
    from geoloc.eval.benchmarks import load_benchmark, request_for

    request = request_for(config.data, split)
    if config.data.benchmark != "manifest":
        return request, load_benchmark(request)
    everything = read_manifest(config.data.train, split=None, on_bad_record=config.data.on_bad_record)
    records = [r for r in everything.records if r.split == split]
    return (request, Dataset(records, everything.source)) if records else None


def _score_run(sweep: Sweep, point: SweepPoint, run_dir: Path) -> dict[str, Any]:
    """The result row of a trained run: validation, held-out recalls, sizes, time."""
    from geoloc.data.bad_records import verify_and_list
    from geoloc.encoder.loading import load_encoder
    from geoloc.eval.benchmarks import score_benchmark
    from geoloc.eval.cache import cached_embeddings
    from geoloc.eval.results import primary_value

    best = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    row: dict[str, Any] = {"run": point.name, **point.values}
    row["val_t2i_R@1"] = primary_value(best)  # the value that selected the run's model
    encoder = load_encoder(
        run_dir, device=point.config.train.device, dtype=point.config.model.dtype, trainable=True
    )  # trainable: so that the count is the training one
    row["total_params"], row["trainable_params"] = encoder.parameter_counts()
    eval_split = sweep.eval_split
    held_out = held_out_split(point.config, eval_split) if eval_split else None
    if held_out is not None and eval_split:
        request, dataset = held_out
        out = run_dir / f"eval_{sweep.eval_split}"
        dataset, _ = verify_and_list(dataset, point.config.data.on_bad_record, out)
        embeddings, _ = cached_embeddings(encoder, dataset, batch_size=sweep.eval_batch_size)
        metrics = score_benchmark(request, embeddings, dataset)
        metrics = {**metrics, "model": str(run_dir), "data": str(dataset.source), "split": sweep.eval_split}
        atomic.write_json(out / "metrics.json", metrics)
        _add_to_card(run_dir, request, metrics, str(dataset.source), eval_split)
        # The flat keys every protocol has (CVG-Text scores text -> image only: no I2T, no mean).
        for k in ("R@1", "R@5", "R@10"):
            row[f"test_t2i_{k}"] = metrics.get(f"text_to_image_{k}")
        row["test_i2t_R@1"] = metrics.get("image_to_text_R@1")
        row["test_mean"] = metrics.get("mean")
    row.update(_train_stats(run_dir))
    return row


def run_point(sweep: Sweep, point: SweepPoint, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) and score one point; a point with a result is only read back."""
    from geoloc.encoder.saved import SPEC_FILE
    from geoloc.train.trainer import CHECKPOINT, TRAINER_STATE, train

    if run_dir.exists():
        _check_run_dir(point, run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.is_file():
        log(f"{point.name}: done before, skipped")
        return json.loads(result_file.read_text(encoding="utf-8"))
    if not (run_dir / "final" / SPEC_FILE).is_file():
        resume = (run_dir / CHECKPOINT / TRAINER_STATE).is_file()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # interrupted before its first checkpoint: nothing to resume from
        if not run_dir.exists():
            run_dir.mkdir(parents=True)
            marker = {"name": point.name, "values": point.values, "config": point.config.to_dict()}
            atomic.write_json(run_dir / POINT_FILE, marker)
        if _zero_shot(point.config):
            log(f"{point.name}: frozen backbone, scored zero-shot")
            _score_zero_shot(point.config, run_dir)
        else:
            log(f"{point.name}: {'resuming from its checkpoint' if resume else 'training'}")
            train(point.config, run_dir, resume=resume)
    log(f"{point.name}: scoring")
    row = _score_run(sweep, point, run_dir)
    atomic.write_json(result_file, row)
    return row


def run_sweep(sweep: Sweep, out: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every point in order, rewriting the results after each; returns the result rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / SWEEP_FILE, sweep.describe())
    for number, point in enumerate(sweep.points, 1):
        log(f"[{number}/{len(sweep.points)}] {point.name}")
        run_point(sweep, point, out / RUNS / point.name, log)
        write_results(sweep, out)
    return collect_results(sweep, out)


# -- results -------------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl; a resumed run logged some steps twice: the later record wins."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and "step" in record:
            latest[(str(record.get("type")), int(record["step"]))] = record
    return sorted(latest.values(), key=lambda r: (r["step"], r.get("type") != "train"))


def collect_results(sweep: Sweep, out: Path) -> list[dict[str, Any]]:
    rows = []
    for point in sweep.points:
        result_file = out / RUNS / point.name / RESULT_FILE
        if result_file.is_file():
            rows.append(json.loads(result_file.read_text(encoding="utf-8")))
    return rows


def _columns(sweep: Sweep, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    present = {k for row in rows for k, v in row.items() if v is not None}
    keys = [(k, k) for k in sweep.keys]
    return [("run", "run"), *keys, *[(c, h) for c, h in METRIC_COLUMNS + RUN_COLUMNS if c in present]]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}" if not math.isnan(value) else ""
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def best_row(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(sweep.metric), (int, float))]
    return max(scored, key=lambda r: r[sweep.metric]) if scored else None


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    columns = _columns(sweep, rows)
    best = best_row(sweep, rows)
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"{len(rows)} of {len(sweep.points)} runs finished. Recalls in percent; `val R@1` is the best "
        f"validation text->image R@1 (model selection), the other recalls are on the "
        f"`{sweep.eval_split}` split. Best by `{sweep.metric}` in bold.",
        "",
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [_cell(row.get(c)) for c, _ in columns]
        if row is best:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_csv(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    columns = _columns(sweep, rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c for c, _ in columns])
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c, _ in columns])
    return buffer.getvalue()


def plot_results(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> None:
    """One horizontal bar per run: the sweep's metric, and the validation R@1 beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    series = [(sweep.metric, "#2b6cb0")]
    if sweep.metric != "val_t2i_R@1":
        series.append(("val_t2i_R@1", "#a0aec0"))
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.55 * len(rows) * len(series)))
    best = best_row(sweep, rows)
    for n, (column, colour) in enumerate(series):
        values = [float(r.get(column) or 0.0) for r in rows]
        positions = [i + n * height for i in range(len(rows))]
        bars = ax.barh(positions, values, height=height, color=colour, label=column)
        for bar, value, row in zip(bars, values, rows, strict=True):
            weight = "bold" if row is best and column == sweep.metric else "normal"
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {value:.1f}",
                va="center",
                fontsize=8,
                fontweight=weight,
            )
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(rows))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("percent" if "R@" in sweep.metric or "mean" in sweep.metric else sweep.metric)
    ax.set_title(f"sweep {sweep.name}: {sweep.metric} per run")
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.12)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(sweep: Sweep, out: Path) -> list[dict[str, Any]]:
    """results.md, results.csv and results.png from the finished runs (all written atomically)."""
    rows = collect_results(sweep, out)
    atomic.write_text(out / "results.md", results_markdown(sweep, rows))
    atomic.write_text(out / "results.csv", results_csv(sweep, rows))
    if rows:
        plot_results(sweep, rows, out / "results.png")
    return rows


def load_sweep_dir(out: str | Path) -> Sweep:
    """The sweep an output folder was made by, from its sweep.json and its runs' configs."""
    from geoloc.config import load_config

    out = Path(out)
    try:
        described = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{out / SWEEP_FILE}: not a readable sweep description ({error})") from error
    points = []
    for p in described["points"]:
        config_file = out / RUNS / p["name"] / "config.yaml"
        config = load_config(config_file) if config_file.is_file() else Config()
        points.append(SweepPoint(p["name"], p["values"], config))
    return Sweep(
        Path(described["sweep_file"]),
        described["name"],
        points,
        described["keys"],
        described["metric"],
        described.get("eval_split"),
        overrides=described.get("overrides", []),
    )
