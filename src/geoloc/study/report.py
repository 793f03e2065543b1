"""`geoloc report`: one self-contained HTML page for a training run or a sweep.

    build_report("runs/tiny")                 # -> runs/tiny/report/report.html (+ PNG figures)
    build_report("runs/sweeps/synthetic-small")

A run's page shows its set-up, its training curves (loss, validation R@1), its recall table and a
retrieval grid: some queries of the held-out split with their top-5 tiles, the right ones marked
and, for data with coordinates, each tile's coordinates and its distance from the true place. A
sweep's page shows the results table and plot, every run's curves together, and the best run's
retrieval grid. Figures are drawn with matplotlib (Agg) and inlined as base64, so the page can be
mailed or opened anywhere; the same figures are written beside it as PNG files.
"""

from __future__ import annotations

import base64
import html
import json
import string
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc import atomic
from geoloc.distance import haversine_km
from geoloc.errors import GeolocError
from geoloc.eval.results import with_flat_keys
from geoloc.study.sweep import (
    METRIC_COLUMNS,
    RUN_COLUMNS,
    RUNS,
    SWEEP_FILE,
    best_row,
    collect_results,
    held_out_split,
    load_sweep_dir,
    plot_results,
    read_metrics,
)

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

REPORT_DIR = "report"
REPORT_FILE = "report.html"
TOP_K = 5
_RIGHT, _WRONG = "#2f855a", "#c53030"


@dataclass
class Figure:
    file: str  # the PNG's name beside the page
    caption: str
    png: bytes


@dataclass
class ReportOptions:
    data: str | None = None  # manifest for the retrieval grid (default: the run's training data)
    split: str | None = None  # its split (default: test, else the run's validation records)
    queries: int = 6
    device: str = "auto"
    use_cache: bool = True


# -- figures -------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def curves_figure(runs: dict[str, list[dict[str, Any]]]) -> bytes:
    """Training loss and validation R@1 against the step, one line per run."""
    plt = _pyplot()
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    several = len(runs) > 1
    for name, records in runs.items():
        train = [r for r in records if r.get("type") == "train"]
        val = [r for r in records if r.get("type") == "val"]
        if train:
            loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, linewidth=1.2)
        if val:
            steps = [r["step"] for r in val]
            line = val_ax.plot(
                steps,
                [r["text_to_image"]["R@1"] for r in val],
                marker="o",
                markersize=3,
                label=f"{name} T2I" if several else "text -> image",
            )
            if not several:
                val_ax.plot(
                    steps,
                    [r["image_to_text"]["R@1"] for r in val],
                    marker="s",
                    markersize=3,
                    linestyle="--",
                    color=line[0].get_color(),
                    alpha=0.6,
                    label="image -> text",
                )
    if not loss_ax.lines:
        loss_ax.text(
            0.5,
            0.5,
            "no training steps (zero-shot)",
            ha="center",
            va="center",
            transform=loss_ax.transAxes,
            color="#718096",
        )
    loss_ax.set(title="training loss (InfoNCE)", xlabel="step", ylabel="loss")
    val_ax.set(title="validation R@1", xlabel="step", ylabel="percent")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7 if several else 8, loc="best")
    fig.tight_layout()
    return _png(fig)


@dataclass
class Retrieval:
    """The top-k tiles of some queries, and the distance statistics of every query."""

    queries: list[dict[str, Any]]  # text, truth (record), hits: [(record, score, right, km)]
    n_queries: int
    top1_km: list[float]  # distance from the true place to the top-1 tile, for every query
    split: str
    source: str
    metrics: dict[str, Any]  # the split's full-gallery recalls, from the same embeddings


def retrieve(
    encoder: Encoder, dataset: Any, split: str, options: ReportOptions, request: Any = None
) -> Retrieval:
    """Embed a split, rank its tiles for every text, keep a spread of queries for the grid.

    `request` (a BenchmarkRequest) scores the split with its benchmark's protocol; without one,
    over the full gallery."""
    from geoloc.eval.cache import cached_embeddings
    from geoloc.eval.evaluate import embed_dataset

    if options.use_cache:
        embeddings, _ = cached_embeddings(encoder, dataset, show_progress=False)
    else:
        embeddings = embed_dataset(encoder, dataset, show_progress=False)
    texts, image_index = dataset.texts_with_image_index()
    records = dataset.records
    scores = embeddings.text_emb @ embeddings.image_emb.T
    k = min(TOP_K, len(records))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    has_coordinates = all(r.lat is not None and r.lon is not None for r in records)
    top1_km: list[float] = []
    if has_coordinates:
        for t, row in enumerate(top):
            truth, found = records[image_index[t]], records[row[0]]
            top1_km.append(float(haversine_km(truth.lat, truth.lon, found.lat, found.lon)))
    # Queries spread evenly over the split (no randomness: the same page every time).
    count = min(options.queries, len(texts))
    picks = sorted({round(i * (len(texts) - 1) / max(1, count - 1)) for i in range(count)})
    queries = []
    for t in picks:
        truth = records[image_index[t]]
        hits = []
        for j in top[t]:
            found = records[j]
            km = float(haversine_km(truth.lat, truth.lon, found.lat, found.lon)) if has_coordinates else None
            hits.append((found, float(scores[t, j]), found.group == truth.group, km))
        queries.append({"text": texts[t], "truth": truth, "hits": hits})
    from geoloc.eval.benchmarks import BenchmarkRequest, score_benchmark

    metrics = score_benchmark(request or BenchmarkRequest(), embeddings, dataset)
    return Retrieval(queries, len(texts), top1_km, split, str(dataset.source), metrics)


def retrieval_figure(retrieval: Retrieval) -> bytes:
    """One row per query: its text, then its top tiles, green when right, red when wrong."""
    from geoloc.data.images import load_image

    plt = _pyplot()
    rows = len(retrieval.queries)
    columns = 1 + max(len(q["hits"]) for q in retrieval.queries)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.3 * columns + 1.2, 2.75 * rows),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.9] + [1] * (columns - 1)},
    )
    for row, query in enumerate(retrieval.queries):
        text_ax = axes[row][0]
        text_ax.axis("off")
        truth = query["truth"]
        where = f"\ntrue place: {truth.lat:.4f}, {truth.lon:.4f}" if truth.lat is not None else ""
        text_ax.text(
            0.0,
            0.5,
            "\n".join(textwrap.wrap(query["text"], 34)[:9]) + where,
            va="center",
            ha="left",
            fontsize=9,
            transform=text_ax.transAxes,
        )
        for col in range(1, columns):
            ax = axes[row][col]
            if col - 1 >= len(query["hits"]):
                ax.axis("off")
                continue
            record, score, right, km = query["hits"][col - 1]
            image = load_image(record.image, record=record.key)
            image.thumbnail((160, 160))
            ax.imshow(np.asarray(image))
            ax.set_xticks([])
            ax.set_yticks([])
            colour = _RIGHT if right else _WRONG
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4 if right else 1.5)
            ax.set_title(
                f"#{col} {'right' if right else 'wrong'}  ({score:.2f})",
                fontsize=8.5,
                color=colour,
                fontweight="bold" if right else "normal",
            )
            if km is not None:
                ax.set_xlabel(f"{record.lat:.4f}, {record.lon:.4f}\nerror {km:.2f} km", fontsize=7.5)
    fig.tight_layout()
    return _png(fig)


# -- page pieces ---------------------------------------------------------------------------------
def _img(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure.caption)}" '
        f'data-file="{html.escape(figure.file)}"><figcaption>{html.escape(figure.caption)}</figcaption></figure>'
    )


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]], name_columns: int = 1, best: int | None = None) -> str:
    head = "".join(
        f'<th class="name">{html.escape(h)}</th>' if i < name_columns else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for n, row in enumerate(rows):
        cells = "".join(
            f'<td class="name">{html.escape(_fmt(v))}</td>'
            if i < name_columns
            else f"<td>{html.escape(_fmt(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f'<tr class="best">{cells}</tr>' if n == best else f"<tr>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="wide">{table}</div>'


def recall_table(run_dir: Path, retrieval: Retrieval | None = None) -> str:
    """Validation (best checkpoint) and held-out recalls of a run, in the papers' layout."""
    rows = []
    best_file = run_dir / "best.json"
    files = [("validation (best)", best_file)] if best_file.is_file() else []
    files += [
        (f"{p.parent.name.removeprefix('eval_')} split", p)
        for p in sorted(run_dir.glob("eval_*/metrics.json"))
    ]
    sources = [(label, json.loads(path.read_text(encoding="utf-8"))) for label, path in files]
    if retrieval is not None and f"{retrieval.split} split" not in dict(sources):
        sources.append((f"{retrieval.split} split", retrieval.metrics))  # scored for this page
    ks: list[str] = []
    for label, metrics in sources:
        # Flat keys (results.py) read every protocol alike, results written before them too;
        # CVG-Text scores text -> image only, so its image -> text cells stay empty.
        flat = with_flat_keys(metrics)
        ks = [k.removeprefix("text_to_image_") for k in flat if k.startswith("text_to_image_R@")]
        rows.append(
            [
                label,
                *[flat.get(f"text_to_image_{k}") for k in ks],
                *[flat.get(f"image_to_text_{k}") for k in ks],
                flat.get("mean"),
                flat.get("n_texts", flat.get("all_n")),
                flat.get("n_images"),
            ]
        )
    if not rows:
        return "<p>No recalls recorded yet.</p>"
    header = ["scored on", *[f"T2I {k}" for k in ks], *[f"I2T {k}" for k in ks], "mean", "texts", "images"]
    return _table(header, rows)


def _setup(run_dir: Path) -> str:
    from geoloc.config import load_config

    config = load_config(run_dir / "config.yaml")
    tuning = config.tuning
    items = {
        "backbone": config.model.backbone,
        "pooling": config.model.pooling,
        "tuning": f"{tuning.strategy}"
        + (
            f", r={tuning.rank}, alpha={tuning.alpha:g}, targets {tuning.targets}"
            if tuning.strategy in ("lora", "dora")
            else ""
        ),
        "loss": f"InfoNCE {config.loss.direction}, temperature {config.loss.temperature:g}"
        + (" (learnable)" if config.loss.learnable_temperature else " (fixed)"),
        "batch": f"{config.train.batch_size} pairs, lr {config.train.lr:g}",
        "data": config.data.train if config.data.benchmark == "manifest" else _benchmark_data(config.data),
    }
    state = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    if state:
        items["steps"] = f"{state[-1]['step']} (epoch {state[-1]['epoch'] + 1})"
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _benchmark_data(data: Any) -> str:
    where = {"geotext1652": f"view {data.view}", "cvgtext": f"{data.city} {data.version} {data.target}"}
    return f"{data.benchmark} at {data.root} ({where.get(data.benchmark, '')})"


def _retrieval_section(
    run_dir: Path, options: ReportOptions, default_split: str | None
) -> tuple[str, Figure, Retrieval]:
    from geoloc.config import load_config
    from geoloc.data.manifest import read_manifest
    from geoloc.encoder.loading import load_encoder
    from geoloc.train.splits import carve_splits

    config = load_config(run_dir / "config.yaml")
    if options.data:  # another manifest than the run's training data
        config.data.benchmark, config.data.train = "manifest", options.data
    split = options.split or default_split or "test"
    held_out = held_out_split(config, split)
    request = None
    if held_out is not None:
        request, dataset = held_out
    elif options.split:
        dataset = read_manifest(config.data.train, split=options.split)  # raises a clear DataError
    else:  # no held-out split in the data: the run's own validation records
        dataset, split = carve_splits(config).val, "validation"
    encoder = load_encoder(run_dir, device=options.device, dtype=config.model.dtype)
    retrieval = retrieve(encoder, dataset, split, options, request)
    figure = Figure(
        "retrieval.png",
        f"Top-{TOP_K} tiles of {len(retrieval.queries)} queries of the {split} "
        "split (green: the right place; score in brackets).",
        retrieval_figure(retrieval),
    )
    text = (
        f"<p>{retrieval.n_queries} queries against the {len(dataset)} tiles of the "
        f"<b>{html.escape(split)}</b> split of <code>{html.escape(retrieval.source)}</code>."
    )
    if retrieval.top1_km:
        km = np.array(retrieval.top1_km)
        text += (
            f" Distance from the true place to the top-1 tile: median <b>{np.median(km):.2f} km</b>, "
            f"mean {km.mean():.2f} km; {100 * (km <= 1.0).mean():.1f} % within 1 km."
        )
    return text + "</p>", figure, retrieval


def _page(title: str, subtitle: str, body: str) -> str:
    template = resources.files("geoloc.study").joinpath("templates/report.html").read_text(encoding="utf-8")
    return string.Template(template).substitute(title=html.escape(title), subtitle=subtitle, body=body)


def _run_page(run_dir: Path, options: ReportOptions) -> tuple[str, list[Figure]]:
    curves = Figure(
        "curves.png",
        "Training loss per logged step and validation R@1 at each validation.",
        curves_figure({run_dir.name: read_metrics(run_dir)}),
    )
    retrieval_text, retrieval, scored = _retrieval_section(run_dir, options, None)
    body = (
        f"<h2>Set-up</h2>{_setup(run_dir)}"
        f"<h2>Training curves</h2>{_img(curves)}"
        "<h2>Recall</h2><p>Recalls in percent over the full gallery; "
        "a hit is any tile of the query's group.</p>"
        f"{recall_table(run_dir, scored)}"
        f"<h2>Retrieval examples</h2>{retrieval_text}{_img(retrieval)}"
    )
    return _page(f"geoloc run {run_dir.name}", html.escape(str(run_dir)), body), [curves, retrieval]


def _sweep_page(out: Path, options: ReportOptions) -> tuple[str, list[Figure]]:
    sweep = load_sweep_dir(out)
    rows = collect_results(sweep, out)
    if not rows:
        raise GeolocError(f"{out}: no run of this sweep has finished yet; run `geoloc sweep` first")
    best = best_row(sweep, rows)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plot_results(sweep, rows, Path(tmp) / "results.png")
        plot = Figure(
            "results.png",
            f"{sweep.metric} of every finished run (best in bold).",
            (Path(tmp) / "results.png").read_bytes(),
        )
    curves = Figure(
        "curves.png",
        "Training loss and validation text->image R@1 of every run.",
        curves_figure({r["run"]: read_metrics(out / RUNS / r["run"]) for r in rows}),
    )
    present = {k for row in rows for k, v in row.items() if v is not None}
    columns = [c for c, _ in METRIC_COLUMNS + RUN_COLUMNS if c in present]
    # The varied keys name each run; the run folder's name is shown only when nothing else does.
    names = list(sweep.keys) or ["run"]
    headers = [*names, *[dict(METRIC_COLUMNS + RUN_COLUMNS)[c] for c in columns]]
    table_rows = [[r.get(k) for k in names] + [r.get(c) for c in columns] for r in rows]
    best_index = rows.index(best) if best is not None else None
    table = _table(headers, table_rows, name_columns=len(names), best=best_index)
    figures = [plot, curves]
    body = (
        f"<h2>Results</h2><p>{len(rows)} of {len(sweep.points)} runs finished. Recalls in percent; "
        "<i>val R@1</i> selects each run's model; the others are on the "
        f"<b>{html.escape(str(sweep.eval_split))}</b> split. "
        f"Best by <code>{html.escape(sweep.metric)}</code> highlighted.</p>{table}{_img(plot)}"
        f"<h2>Training curves</h2>{_img(curves)}"
    )
    if best is not None:
        best_dir = out / RUNS / best["run"]
        text, retrieval, scored = _retrieval_section(best_dir, options, sweep.eval_split)
        body += (
            f"<h2>Retrieval examples of the best run, {html.escape(best['run'])}</h2>{text}{_img(retrieval)}"
        )
        body += f"<h2>Recall of the best run</h2>{recall_table(best_dir, scored)}"
        figures.append(retrieval)
    subtitle = f"{html.escape(str(out))} &middot; sweep file <code>{html.escape(str(sweep.path))}</code>"
    return _page(f"geoloc sweep {sweep.name}", subtitle, body), figures


def build_report(
    target: str | Path, out: str | Path | None = None, options: ReportOptions | None = None
) -> Path:
    """Write `<out>/report.html` and its PNG figures (default out: `<target>/report`); return the page."""
    from geoloc.encoder.saved import saved_encoder_dir

    target = Path(target)
    options = options or ReportOptions()
    if (target / SWEEP_FILE).is_file():
        page, figures = _sweep_page(target, options)
    elif (target / "config.yaml").is_file() and saved_encoder_dir(target) is not None:
        page, figures = _run_page(target, options)
    else:
        raise GeolocError(
            f"{target}: neither a sweep folder (with {SWEEP_FILE}) nor a training run "
            "(with config.yaml and best/ or final/)"
        )
    folder = Path(out) if out is not None else target / REPORT_DIR
    with atomic.atomic_dir(folder) as tmp:
        for figure in figures:
            (tmp / figure.file).write_bytes(figure.png)
        (tmp / REPORT_FILE).write_text(page, encoding="utf-8")
    return folder / REPORT_FILE
