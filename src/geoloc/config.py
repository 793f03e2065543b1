"""Typed configuration: dataclasses loaded from YAML and overridden with `--set key=value`.

    config = load_config("configs/demo.yaml", overrides=["train.lr=1e-4", "tuning.rank=8"])

A config file may extend another: `base: paper-internvl3_5-1b.yaml` (relative to the file) reads
that one first, then merges this file's sections into it key by key, so a variant states only
what it changes. Unknown keys, wrong types and choices outside a field's `Literal` are refused
when the config is read (by pydantic, strictly), naming the file, the key and the valid choices,
before any data is touched. The resolved config is saved in every run directory, so a run can be
repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from yaml.constructor import ConstructorError

from geoloc.choices import (
    Batching,
    CompileBackend,
    LossDirection,
    NoDecayRule,
    Sharding,
    TileFeatures,
    TrainPrecision,
    WarmupRule,
    WeightsDtype,
    canonical,
    options,
)
from geoloc.data.readers import BenchmarkData
from geoloc.encoder.spec import EmbeddingSettings
from geoloc.encoder.tuning import TuningConfig
from geoloc.errors import ConfigError


# The choice fields, each a Literal stated once in geoloc/choices.py. Each is checked when the
# config is read (`_validated`), so code further on can rely on the value being one of its options.
@dataclass
class ModelConfig(EmbeddingSettings):
    """The backbone, its weights' dtype, and the embedding settings (pooling, templates, ...),
    whose fields are the saved spec's own (encoder/base.py)."""

    backbone: str = "tiny-smolvlm"  # preset, HF id or local model folder
    dtype: WeightsDtype = "float32"  # the weights' dtype


@dataclass
class LossConfig:
    temperature: float = 0.02  # the released recipe's (train.py's CLI default at HEAD)
    learnable_temperature: bool = False
    direction: LossDirection = "text_to_image"


@dataclass
class DataConfig(BenchmarkData):
    """Where the training data is. `benchmark` picks the reader (data/readers.py, whose
    `BenchmarkData` states the benchmark's fields; see docs/benchmarks.md):

    - manifest: `train` is a manifest file or a folder with manifest.jsonl; its `train_split` rows
      (and rows without a split) train, its `val_split` rows validate when it has any;
    - geotext1652: `root` holds train.json and images/; train.json's records train;
    - cvgtext: `root` holds the CVG-Text files; the `city` / `version` / `target` train.json trains.

    Validation is never read from a test split: without a val split it is a seeded
    `val_fraction` of the training groups (buildings for GeoText-1652, locations for CVG-Text).
    `val_fraction: 0` carves nothing: every training record trains (the released recipe), and
    without a val split there is no validation, so the run's model is its final checkpoint.
    """

    train: str = ""  # manifest only: a manifest file or a folder with manifest.jsonl
    train_split: str = "train"
    val_split: str = "val"  # manifest: used when the data has it; else carved from the training rows
    val_fraction: float = 0.1  # 0: no carve, train on every record, keep the final checkpoint
    max_val_images: int = 1000

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"data.val_fraction: {self.val_fraction!r} must be at least 0 (0: train on everything) "
                "and below 1"
            )
        if self.max_val_images < 1:
            raise ConfigError(f"data.max_val_images: {self.max_val_images!r} must be at least 1")


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 1
    max_steps: int = 0  # 0 = run all epochs
    max_minutes: float = 0.0  # 0 = no time budget; else stop (and save) when it runs out
    batch_size: int = 10
    lr: float = 3e-5
    weight_decay: float = 0.01
    # Which parameters are exempt from weight decay: "ndim" every 1-D one (biases, norms, DoRA
    # magnitude vectors); "names" only those whose names contain `bias` or `LayerNorm.weight`,
    # as the released code does (so DoRA magnitudes ARE decayed there).
    no_decay: NoDecayRule = "ndim"
    warmup_ratio: float = 0.01
    # "ceil": ceil(total x ratio) warm-up steps (at least 1), the first at 1/warm-up of the lr;
    # "released": int(total x ratio) steps (possibly 0) starting from factor 0, as released.
    warmup: WarmupRule = "ceil"
    min_lr_ratio: float = 1e-3
    grad_clip: float = 1.0
    precision: TrainPrecision = "auto"  # auto: bf16 autocast on a GPU that supports it
    gradient_checkpointing: bool = False
    device: str = "auto"
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    save_every: int = 100  # steps between resumable checkpoints
    progress: bool = True
    # Gradient caching: the batch is encoded in chunks of this many pairs, so memory is that of
    # one chunk whatever the batch size; gradients equal the plain loss's. 0 = off.
    grad_cache_chunk: int = 0
    # Tile vision features: "cache" computes each tile's once and keeps it on disk (only when the
    # vision tower and projector are not adapted), "compute" runs the vision tower every step,
    # "auto" caches whenever it can.
    tile_features: TileFeatures = "auto"
    tile_feature_dir: str = ""  # default: $GEOLOC_CACHE/tile_features
    # Several processes: "ddp" keeps a whole model in each; "fsdp" splits the frozen language
    # model's weights across them (train/sharding.py), for backbones too large to replicate.
    sharding: Sharding = "ddp"
    # Processes that decode and preprocess tiles while the model computes (data/pipeline.py).
    # "auto": this process's share of the cores less what computing takes (torch's threads on a
    # CPU, one core on an accelerator), at most 8; 0 decodes in
    # the training process itself. Any count gives the same batches in the same order.
    num_workers: int | Literal["auto"] = "auto"
    # Run the encoder's forward through torch.compile; texts are padded to a few bucket
    # lengths (powers of two) so that it compiles a bounded number of times.
    compile: bool = False
    # torch.compile's backend: "inductor" generates kernels; "aot_eager" traces the same graphs
    # (forward and backward) without generating code, a quick check that a model compiles.
    compile_backend: CompileBackend = "inductor"
    # How items are put into batches (train/batching.py). "random": shuffled, the released
    # recipe; "nearby": each item pulls its spatial neighbours (records' lat/lon) into its batch;
    # "mined": each pulls the tiles the current model confuses with it, re-mined every
    # `mine_every` steps (0: at the start of every epoch). No batch ever holds two items of one
    # group.
    batching: Batching = "random"
    batch_neighbours: int = 3  # partners each item pulls into its batch under nearby / mined
    mine_every: int = 0
    # mined: the share of the run's steps trained on random batches before the first mining.
    mining_warmup: float = 0.0
    # Items whose places are closer than this (km) never share a batch, under every method.
    negative_min_km: float = 0.0
    # mined: a tile is no text's negative when the text scores it above its own tile's score
    # less this margin (a guard against unlabelled matches); checked both ways in a batch.
    false_negative_margin: float = 0.0

    def __post_init__(self) -> None:
        for name in ("batch_neighbours", "mine_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: {getattr(self, name)!r} must be at least 0")
        if not 0.0 <= self.mining_warmup < 1.0:
            raise ConfigError(f"train.mining_warmup: {self.mining_warmup!r} must be at least 0 and below 1")
        if self.negative_min_km < 0:
            raise ConfigError(f"train.negative_min_km: {self.negative_min_km!r} must be at least 0")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sections(cls: Any = None) -> list[type]:
    """The config's dataclasses: `Config` and, recursively, its sections."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [cls, *(section for child in nested for section in _sections(child))]


def _validator() -> TypeAdapter[Config]:
    """pydantic's validator of the config (serve/'s request models use the same library).

    Each section refuses keys it does not have. Values are checked strictly, as JSON: an int is
    never read from "3" nor a bool from 1, though an int may stand for a float. pydantic reads a
    stdlib dataclass's settings from its `__pydantic_config__`."""
    for section in _sections():
        # pydantic's documented hook for a stdlib dataclass; ty cannot see it on `type`.
        section.__pydantic_config__ = ConfigDict(extra="forbid")  # ty: ignore[missing-attribute]
    return TypeAdapter(Config)


def _choices_in(annotation: Any) -> tuple[str, ...]:
    """The string options of a field's type: its Literal's, or those of a Literal in a union."""
    if typing.get_origin(annotation) is Literal:
        return options(annotation)
    return tuple(o for member in typing.get_args(annotation) for o in _choices_in(member))


_EXPECTED = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str"}


def _problem(error: ValidationError) -> str:
    """pydantic's first complaint as one line that names the key and says what is valid."""
    errors = error.errors()
    unknown = [e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")]
    if unknown:
        section = unknown[0]["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == section)
        known = sorted(f.name for f in dataclasses.fields(_field_type([str(p) for p in section])))
        where = ".".join(map(str, section))
        text = f"unknown key(s) {', '.join(names)}; known: {', '.join(known)}"
        return f"{where}: {text}" if where else text
    first = errors[0]
    path = [str(part) for part in first["loc"]]
    while path and _field_type(path) is None:  # a union's member, not a key
        path.pop()
    key, value, annotation = ".".join(path), first["input"], _field_type(path)
    if dataclasses.is_dataclass(annotation):
        return f"{key}: expected a mapping, got {type(value).__name__}"
    choices = _choices_in(annotation)
    if choices and isinstance(value, str):
        members = typing.get_args(annotation)
        others = [name for name, kind in (("int", int), ("float", float)) if kind in members]
        return f"{key}: {value!r} is not one of {', '.join((*choices, *others))}"
    if first["type"] in _EXPECTED:
        return f"{key}: expected {_EXPECTED[first['type']]}, got {type(value).__name__} {value!r}"
    return f"{key}: {value!r}: {first['msg']}"


def _in_use_spelling(data: Any, path: list[str]) -> Any:
    """`data` with every choice in today's spelling (`bf16` read as `bfloat16`)."""
    if isinstance(data, dict):
        return {key: _in_use_spelling(value, [*path, str(key)]) for key, value in data.items()}
    return canonical(data) if _choices_in(_field_type(path)) else data


def _validated(data: dict[str, Any]) -> Config:
    try:
        text = json.dumps(_in_use_spelling(data, []), allow_nan=False)
    except (TypeError, ValueError) as error:  # e.g. a YAML date or a NaN: not a setting's value
        raise ConfigError(f"a value that is not text, a number, true/false or a mapping ({error})") from None
    try:
        return _VALIDATOR.validate_json(text, strict=True)
    except ValidationError as error:
        raise ConfigError(_problem(error)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: cannot parse the value ({error})") from error
    # YAML reads "1e-4" as a string; a number is what was meant.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def _field_type(path: list[str]) -> Any:
    """The declared type of a dotted config key, or None when there is no such key."""
    node: Any = Config
    for part in path:
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part]
    return node


def _is_text(annotation: Any) -> bool:
    """A plain string field, or a choice among strings: YAML must not turn `off` into False."""
    return annotation is str or typing.get_origin(annotation) is Literal


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "config"
) -> Config:
    data = dict(data or {})
    for text in overrides or []:
        path, value = parse_override(text)
        if _is_text(_field_type(path)):
            value = text.split("=", 1)[1]  # a string field takes the text as written, braces and all
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    config = _validated(data)
    _check_targets(config.tuning.targets)
    return config


_VALIDATOR = _validator()


def _check_targets(targets: str) -> None:
    """tuning.targets names target sets joined with '+', or is a custom 're:<regex>'."""
    from geoloc.encoder.tuning import TARGET_SETS

    if targets.startswith("re:"):
        return
    unknown = [name for name in targets.split("+") if name not in TARGET_SETS]
    if unknown:
        raise ConfigError(
            f"tuning.targets: {unknown[0]!r} is not one of {', '.join(TARGET_SETS)} "
            "(join several with '+', or give 're:<regex>')"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a mapping that gives one key twice (safe_load keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what is wrong and where (yaml's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}"


def _read_mapping(path: Path) -> dict[str, Any]:
    """One config file's own YAML mapping (its `base` not yet followed)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML ({_yaml_problem(error)})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def merge_sections(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_data(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's sections with its `base` chain resolved, as plain data (not yet checked).

    `base` names another config file, relative to this one; its sections are read first (and
    its own base before them), then this file's are merged over them. A chain that comes back
    to a file already in it is refused.
    """
    path = Path(path)
    chain = (*_chain, path.resolve())
    if chain[-1] in _chain:
        names = " -> ".join(str(p) for p in chain)
        raise ConfigError(f"{path}: 'base' goes round in a cycle: {names}")
    data = _read_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the file name of another config, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} is not a file")
    return merge_sections(read_config_data(base_path, chain), data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data: Any = read_config_data(path) if path is not None else {}
    try:
        return config_from_dict(data, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from error


def save_config(config: Config, path: str | Path) -> None:
    from geoloc import atomic

    atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
