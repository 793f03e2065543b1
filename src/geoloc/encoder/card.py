"""Model cards: a README.md in Hugging Face's model-card form in every saved encoder folder.

    card.write_card(folder, card.new_facts(spec, counts, embedding_dim, run_dir=run))  # Encoder.save
    card.record_validation(run / "best", metrics, step)                               # the trainer
    card.add_result(folder, card.eval_result(metrics, dataset, split))                # geoloc eval

The card is drawn from the facts beside it, `model_card.json`: the encoder's spec, its total and
trainable parameter counts when saved, its embedding width, the training recipe (the run's
`config.yaml`, when the folder is a run's `best/` or `final/`), and its evaluation results, each
with its data set, split and protocol. Adding a result rewrites both files (atomically, under a
lock file beside the folder, `.NAME.model_card.lock`, never inside it: the folder is what users
upload), so the card always shows every result the folder has. The YAML front matter holds
`base_model` (a Hugging Face id, when the backbone has one), `library_name`, `tags`, `datasets`
(what it trained on), `metrics` and, with results, `model-index` (the Hub's results layout).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import re
import secrets
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import yaml

from geoloc import atomic
from geoloc.errors import GeolocError

CARD = "README.md"
FACTS = "model_card.json"
_OLD_LOCK = ".model_card.lock"  # where geoloc before this version kept the lock: inside the folder
FACTS_VERSION = 1
LIBRARY = "geoloc"
# What a run directory holds beside best/ and final/ (geoloc.train.trainer's layout).
RUN_CONFIG = "config.yaml"
RUN_MODELS = ("best", "final")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HF_CACHE = re.compile(r"models--([\w.-]+)--([\w.-]+)")
_BENCHMARK_NAMES = {"geotext1652": "GeoText-1652", "cvgtext": "CVG-Text"}


# -- facts -------------------------------------------------------------------------------------
def base_model_id(source: str) -> str | None:
    """The Hugging Face id a backbone source stands for, or None (a preset, an unknown folder).

    A hub id is itself; a local folder gives the id in its path (the hub cache's
    `models--OWNER--NAME`) or in its config.json's `_name_or_path`.
    """
    path = Path(source)
    if path.exists():
        cached = _HF_CACHE.search(str(path.resolve()))
        if cached:
            return f"{cached.group(1)}/{cached.group(2)}"
        try:
            named = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_name_or_path", "")
        except (OSError, ValueError, AttributeError):
            return None
        return (
            named
            if isinstance(named, str) and _HUB_ID.fullmatch(named) and not Path(named).exists()
            else None
        )
    return source if _HUB_ID.fullmatch(source) else None


def run_recipe(folder: Path) -> dict[str, Any] | None:
    """The training config of the run that `folder` belongs to (`RUN/best`, `RUN/final`), or None."""
    config = folder.parent / RUN_CONFIG
    if folder.name not in RUN_MODELS or not config.is_file():
        return None
    try:
        recipe = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise GeolocError(f"{config}: unreadable training config ({error})") from error
    return recipe if isinstance(recipe, dict) else None


def new_facts(
    spec: dict[str, Any],
    counts: tuple[int, int],
    embedding_dim: int,
    run_dir: Path | None = None,
    folder: Path | None = None,
    derived_from: Path | None = None,
) -> dict[str, Any]:
    """The facts of a model being saved: no results yet (a new save is new weights).

    `spec` is the EncoderSpec as a dict, with `backbone` as the source it was built from;
    `counts` is (total, trainable) when saved. The recipe is read from `folder`'s run directory
    (`folder` is where the model is going, e.g. RUN/best). `derived_from` is the saved folder
    the encoder was loaded from (an export: merged, cast); its base model, recipe and trained
    counts carry over when this save has none of its own.
    """
    total, trainable = counts
    # The card is secondary: an unreadable config.yaml or source card leaves its part out of the
    # card, and never stops the weights from being saved.
    recipe = _or_none(run_recipe, folder)
    base = base_model_id(spec.get("backbone", ""))
    if recipe is not None:
        base = base or base_model_id(str(recipe.get("model", {}).get("backbone", "")))
    facts: dict[str, Any] = {
        "facts_version": FACTS_VERSION,
        "save_id": secrets.token_hex(8),
        "saved": _now(),
        "spec": spec,
        "base_model": base,
        "embedding_dim": int(embedding_dim),
        "parameters": {"total": int(total), "trainable": int(trainable)},
        "recipe": recipe,
        "derived_from": None,
        "results": [],
    }
    previous = _or_none(read_facts, derived_from)
    if previous is not None:
        facts["base_model"] = facts["base_model"] or previous.get("base_model")
        if recipe is not None:  # a run's own save (e.g. resumed from its checkpoint): not an export
            return facts
        facts["derived_from"] = str(derived_from)
        facts["recipe"] = previous.get("recipe")
        if trainable == 0:  # nothing trains in the export: the counts as trained are the source's
            facts["parameters"]["trainable"] = previous["parameters"].get("trainable")
            facts["parameters"]["trainable_in_source"] = True
    return facts


def _or_none(read: Any, folder: Path | None) -> dict[str, Any] | None:
    if folder is None:
        return None
    try:
        return read(folder)
    except GeolocError as error:
        warnings.warn(f"model card: {error}; that part is left out", stacklevel=3)
        return None


def read_facts(folder: Path) -> dict[str, Any] | None:
    """The card's facts in `folder`, or None when it has none (saved before cards existed)."""
    file = Path(folder) / FACTS
    if not file.is_file():
        return None
    try:
        facts = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{file}: unreadable model card facts ({error})") from error
    if not isinstance(facts, dict) or facts.get("facts_version") != FACTS_VERSION:
        raise GeolocError(f"{file}: model card facts of another version; save the model again")
    return facts


def _facts_from_spec(folder: Path) -> dict[str, Any]:
    """Facts for a folder saved before cards: its spec, counts not recorded."""
    try:
        spec = json.loads((folder / "geoloc_encoder.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{folder}: not a saved geoloc encoder ({error})") from error
    return {
        "facts_version": FACTS_VERSION,
        "save_id": secrets.token_hex(8),
        "saved": None,
        "spec": spec,
        "base_model": base_model_id(str(spec.get("backbone", ""))),
        "embedding_dim": None,
        "parameters": {"total": None, "trainable": None},
        "recipe": run_recipe(folder),
        "derived_from": None,
        "results": [],
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- results -----------------------------------------------------------------------------------
def dataset_name(benchmark: str, data: str | None = None, **details: Any) -> str:
    """A data set's name for the card: the benchmark's (with CVG-Text's city, queries and tiles),
    or a manifest's path."""
    if benchmark == "cvgtext":
        city, version = details.get("city") or "?", details.get("version", "mixed")
        return f"CVG-Text {city} ({version} queries, {details.get('target', 'satellite')} tiles)"
    if benchmark == "geotext1652" and details.get("view") not in (None, "all"):
        return f"GeoText-1652 ({details['view']} images)"
    if benchmark in _BENCHMARK_NAMES:
        return _BENCHMARK_NAMES[benchmark]
    return str(data) if data else "manifest"


def _recipe_dataset(recipe: dict[str, Any] | None) -> str | None:
    data = (recipe or {}).get("data") or {}
    if not data:
        return None
    return dataset_name(
        data.get("benchmark", "manifest"),
        data.get("train") or data.get("root"),
        city=data.get("city"),
        version=data.get("version", "mixed"),
        target=data.get("target", "satellite"),
    )


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat recall keys of a result (`text_to_image_R@1`, `panorama_L@50`, ...)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if "@" in name and isinstance(value, int | float) and not isinstance(value, bool)
    }


def eval_result(
    metrics: dict[str, Any], dataset: str, split: str | None, source: str = "geoloc eval", **extra: Any
) -> dict[str, Any]:
    """One result for the card, from a protocol's metrics (geoloc.eval: flat keys, `protocol`)."""
    scores = _scores(metrics)
    if not scores:
        raise GeolocError("these results hold no recall figures (no flat keys such as text_to_image_R@1)")
    result: dict[str, Any] = {
        "dataset": dataset,
        "split": split or "all",
        "protocol": metrics.get("protocol", "?"),
        "primary_metric": metrics.get("primary_metric", "text_to_image_R@1"),
        "metrics": scores,
        "texts": metrics.get("n_texts"),
        "images": metrics.get("n_images"),
        "source": source,
        "date": _now(),
    }
    if metrics.get("templates"):
        result["templates"] = metrics["templates"]
    return result | extra


def lock_file(folder: str | Path) -> Path:
    """The lock that serialises changes to `folder`'s card: beside the folder, not in it."""
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.model_card.lock")


@contextlib.contextmanager
def _locked(folder: Path) -> Generator[None]:
    with open(lock_file(folder), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_result(folder: str | Path, result: dict[str, Any], save_id: str | None = None) -> bool:
    """Add (or replace: same data set, split, protocol and source) a result, and rewrite the card.

    `save_id` is the facts' id read before the model was loaded: if the folder has been saved
    again since (other weights), the result is not added and False is returned.
    """
    folder = Path(folder)
    with _locked(folder):
        facts = read_facts(folder) or _facts_from_spec(folder)
        if save_id is not None and facts["save_id"] != save_id:
            return False
        same = ("dataset", "split", "protocol", "source", "templates")
        kept = [r for r in facts["results"] if any(r.get(key) != result.get(key) for key in same)]
        facts["results"] = [*kept, result]
        write_card(folder, facts)
    return True


def record_validation(
    folder: str | Path, metrics: dict[str, Any], step: int, source: str = "validation during training"
) -> bool:
    """The trainer's call: add the validation result of a run's saved model (best/, final/).

    The data set is the recipe's; the split is `val` (the data's own, or carved from training).
    Returns False when `metrics` is empty (nothing validated).
    """
    if not metrics:
        return False
    folder = Path(folder)
    facts = read_facts(folder) or _facts_from_spec(folder)
    dataset = _recipe_dataset(facts.get("recipe")) or "training data"
    add_result(folder, eval_result(metrics, dataset, "val", source=source, step=step))
    return True


def card_save_id(folder: str | Path) -> str | None:
    """The save id of a saved encoder folder's card, or None when it has none."""
    facts = read_facts(Path(folder))
    return facts["save_id"] if facts else None


# -- the card ----------------------------------------------------------------------------------
def write_card(folder: str | Path, facts: dict[str, Any], name: str | None = None) -> Path:
    """Write `model_card.json` and the README.md drawn from it into `folder`, each atomically.

    `name` is the card's title (default: the folder's name)."""
    folder = Path(folder)
    atomic.write_json(folder / FACTS, facts)
    atomic.write_text(folder / CARD, render_card(facts, name or folder.name))
    (folder / _OLD_LOCK).unlink(missing_ok=True)  # left by an older geoloc: not part of a model
    return folder / CARD


def read_front_matter(card: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card file."""
    text = Path(card).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise GeolocError(f"{card}: no YAML front matter")
    meta = yaml.safe_load(text[4 : text.index("\n---\n", 4)])
    return meta if isinstance(meta, dict) else {}


def front_matter(facts: dict[str, Any], name: str) -> dict[str, Any]:
    """The card's metadata, as the Hugging Face Hub reads it."""
    spec = facts["spec"]
    tuning = spec.get("tuning", {})
    meta: dict[str, Any] = {}
    if facts.get("base_model"):
        meta["base_model"] = facts["base_model"]
    meta["library_name"] = LIBRARY
    tags = [
        "geoloc",
        "cross-view-geo-localization",
        "text-to-image-retrieval",
        "remote-sensing",
        "satellite-imagery",
        spec.get("family") or "unknown-family",
        f"tuning-{tuning.get('strategy', 'unknown')}",
        f"pooling-{spec.get('pooling', 'unknown')}",
    ]
    if tuning.get("strategy") in ("lora", "dora"):
        tags.append("peft")
    meta["tags"] = tags
    trained_on = _recipe_dataset(facts.get("recipe"))
    if trained_on:
        meta["datasets"] = [trained_on]
    results = facts.get("results", [])
    names = sorted({metric for result in results for metric in result["metrics"]})
    meta["metrics"] = names or ["text_to_image_R@1"]
    if results:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {
                            "type": "text-to-image-retrieval",
                            "name": "Cross-view text-to-image geo-localization",
                        },
                        "dataset": {"name": r["dataset"], "type": r["dataset"], "split": r["split"]},
                        "metrics": [
                            {"type": metric, "value": value, "name": f"{metric} ({r['protocol']})"}
                            for metric, value in r["metrics"].items()
                        ],
                    }
                    for r in results
                ],
            }
        ]
    return meta


def _count(value: int | None) -> str:
    return f"{value:,}" if isinstance(value, int) else "not recorded"


def _model_section(facts: dict[str, Any]) -> list[str]:
    spec = facts["spec"]
    tuning = spec.get("tuning", {})
    params = facts["parameters"]
    trainable = _count(params.get("trainable"))
    if params.get("trainable_in_source"):
        trainable += " (as trained, in the folder this was exported from)"
    strategy = tuning.get("strategy", "?")
    tuned = strategy
    if strategy in ("lora", "dora"):
        tuned += (
            f" (rank {tuning.get('rank')}, alpha {tuning.get('alpha')}, dropout {tuning.get('dropout')}, "
            f"init {tuning.get('init')}, targets {tuning.get('targets')})"
        )
    rows = [
        (
            "backbone",
            f"`{spec.get('backbone')}`" + (f" ({facts['base_model']})" if facts.get("base_model") else ""),
        ),
        ("family", spec.get("family") or "?"),
        ("tuning", tuned),
        ("pooling", spec.get("pooling")),
        ("text template", f"`{spec.get('text_template')}`"),
        ("image template", f"`{spec.get('image_template')}`"),
        ("max text tokens", spec.get("max_text_tokens")),
        ("preprocessing", spec.get("preprocessing")),
        ("embedding dimension", facts.get("embedding_dim") or "not recorded"),
        ("parameters, total", _count(params.get("total"))),
        ("parameters, trainable", trainable),
    ]
    lines = ["## Model", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if facts.get("derived_from"):
        lines += ["", f"Exported from `{facts['derived_from']}` (its recipe and trained counts are shown)."]
    return lines


def _recipe_section(facts: dict[str, Any]) -> list[str]:
    recipe = facts.get("recipe")
    lines = ["## Training recipe", ""]
    if not recipe:
        return [
            *lines,
            "No training run is recorded for this folder: it was saved outside `geoloc train` "
            "(a zero-shot encoder, or an export of a folder without a card).",
        ]
    loss, data, train = recipe.get("loss", {}), recipe.get("data", {}), recipe.get("train", {})
    steps = (
        f"{train.get('max_steps')} steps at most" if train.get("max_steps") else "every step of each epoch"
    )
    lines += [
        f"- data: {_recipe_dataset(recipe)} (split `{data.get('train_split', 'train')}`; validation: "
        f"split `{data.get('val_split', 'val')}` when the data has it, else {data.get('val_fraction')} "
        "of the training rows carved off)",
        f"- loss: InfoNCE, temperature {loss.get('temperature')} "
        f"({'learned' if loss.get('learnable_temperature') else 'fixed'}), direction {loss.get('direction')}",
        f"- optimisation: AdamW, lr {train.get('lr')}, weight decay {train.get('weight_decay')}, "
        f"warm-up ratio {train.get('warmup_ratio')}, min lr ratio {train.get('min_lr_ratio')}, "
        f"gradient clip {train.get('grad_clip')}",
        f"- epochs: {train.get('epochs')} ({steps}), batch size {train.get('batch_size')}, "
        f"precision {train.get('precision')}, seed {train.get('seed')}",
        "",
        "The whole configuration, as `geoloc train` resolved it:",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
    ]
    return lines


def _results_section(facts: dict[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    results = facts.get("results", [])
    if not results:
        return [*lines, "No evaluation results yet: `geoloc eval` on this folder adds them here."]
    lines += [
        "Recall in percent. Each result names its data, split and protocol (docs/benchmarks.md "
        "describes the protocols); only results of these exact weights are kept.",
        "",
    ]
    for r in results:
        where = r["source"] + (f", step {r['step']}" if "step" in r else "")
        size = f"; {r['texts']} texts, {r['images']} images" if r.get("texts") is not None else ""
        lines += [f"### {r['dataset']}, split `{r['split']}`, protocol `{r['protocol']}`", ""]
        lines += [f"From {where}, {r['date']}{size}. Primary metric: `{r['primary_metric']}`."]
        if r.get("templates"):
            lines += [
                f"Templates: text `{r['templates'].get('text')}`, image `{r['templates'].get('image')}`."
            ]
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in r["metrics"].items()]
        lines += [""]
    return lines[:-1]


USE_AND_LIMITS = """## Use

```python
from geoloc import load_encoder

encoder = load_encoder("FOLDER")
queries = encoder.encode_text(["a red square building with a pond on its left"])
tiles = encoder.encode_images(["tiles/0001.png"])
scores = queries @ tiles.T  # unit vectors: cosine similarity
```

or `geoloc index build FOLDER --gallery TILES --out INDEX`, then `geoloc search INDEX "..."`.

## Intended use and limits

- Intended use: ranking satellite or aerial tiles by how well they match a person's description
  of a place seen from the ground (cross-view geo-localization), to narrow down where it is.
  Results are candidates for a person to check, not a position fix.
- The recall figures above hold for their data, split and protocol only. Imagery of other
  regions, seasons, sensors or resolutions, and descriptions in other styles or languages, can
  score far lower; measure on your own gallery first.
- Tiles must be preprocessed as the spec above says (the same square size and template); the
  query and the gallery must come from these same weights (geoloc checks the fingerprint).
- Not for identifying or tracking people, nor for decisions about a person's safety or rights
  without a human check.
- A tiny preset backbone (no Hugging Face base model above) has random weights: such a model is
  for tests and demonstrations only.
"""


def render_card(facts: dict[str, Any], name: str) -> str:
    """The README.md text: front matter, then the model, recipe, results, use and limits."""
    meta = yaml.safe_dump(front_matter(facts, name), sort_keys=False, allow_unicode=True)
    params = facts["parameters"]
    summary = (
        f"A geoloc encoder: it turns a description of a place and satellite tiles into unit vectors "
        f"of {facts.get('embedding_dim') or '?'} dimensions, so that a description finds its tile by cosine "
        f"similarity. {_count(params.get('total'))} parameters, {_count(params.get('trainable'))} trainable."
    )
    saved = f"Saved {facts['saved']}." if facts.get("saved") else ""
    lines = [
        "---",
        meta.rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"{summary} {saved}".rstrip(),
        "",
        *_model_section(facts),
        "",
        *_recipe_section(facts),
        "",
        *_results_section(facts),
        "",
        USE_AND_LIMITS.rstrip(),
        "",
    ]
    return "\n".join(lines)
