from pathlib import Path

import pytest

from geoloc.config import Config, load_config, save_config
from geoloc.errors import ConfigError


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {pooling: mean}\ntrain: {lr: 1.0e-4, epochs: 3}\n")
    config = load_config(
        path, ["train.epochs=5", "tuning.rank=8", "train.lr=2e-5", "loss.learnable_temperature=true"]
    )
    assert isinstance(config, Config)
    assert config.model.pooling == "mean"
    assert config.train.epochs == 5 and config.train.lr == pytest.approx(2e-5)
    assert config.tuning.rank == 8 and config.loss.learnable_temperature is True


def test_round_trip(tmp_path: Path) -> None:
    config = load_config(None, ["tuning.strategy=dora", "model.text_template=query: {text}"])
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {lrr: 1}\n", "unknown key"),
        ("train: {epochs: three}\n", "train.epochs: expected int"),
        ("train: [1, 2]\n", "train: expected a mapping"),
        ("- just a list\n", "expected a mapping"),
        ("train: {epochs: 1\n", "invalid YAML"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_bad_overrides() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="expected float"):
        load_config(None, ["train.lr=fast"])


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"model: {backbone: caf\xe9}\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


CONFIGS = Path(__file__).parent.parent / "configs"
BACKBONES = ("smolvlm-256m", "smolvlm-500m", "internvl3_5-1b")
# Trainable parameters of the paper's recipe (DoRA r=16, "paper" targets) on each backbone,
# as counted on the real architectures (tests/encoder/test_counting.py checks the counting).
RECIPE_TRAINABLE = {"smolvlm-256m": 4_136_832, "smolvlm-500m": 6_408_192, "internvl3_5-1b": 9_027_584}


def test_shipped_configs_load() -> None:
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        config = load_config(path)
        assert config.model.backbone
        if config.data.benchmark == "manifest":
            assert config.data.train, path
        else:
            assert config.data.root and not config.data.train, path
    recipe = load_config(CONFIGS / "paper-internvl3_5-1b.yaml")
    sharded = load_config(CONFIGS / "scale-internvl3_5-8b-fsdp-geotext1652.yaml")
    assert (sharded.train.sharding, sharded.train.gradient_checkpointing) == ("fsdp", True)
    assert sharded.tuning == recipe.tuning  # the paper's adapters
    assert (recipe.tuning.strategy, recipe.tuning.rank, recipe.tuning.alpha) == ("dora", 16, 128.0)
    # The released train.py's temperature at HEAD (its CLI default, which overrides its YAML).
    assert recipe.loss.temperature == 0.02 and recipe.loss.direction == "text_to_image"
    assert sharded.loss == recipe.loss


@pytest.mark.parametrize("backbone", BACKBONES)
def test_benchmark_recipes_are_the_paper_recipe(backbone: str) -> None:
    from geoloc.encoder.counting import count_for_config

    base = load_config(CONFIGS / f"paper-{backbone}.yaml")
    geotext = load_config(CONFIGS / f"paper-{backbone}-geotext1652.yaml")
    cvgtext = load_config(CONFIGS / f"paper-{backbone}-cvgtext.yaml")
    for config in (geotext, cvgtext):
        # Same model, adapters, loss and schedule as the backbone's recipe: only the data differs.
        assert (config.model, config.tuning, config.loss, config.train) == (
            base.model,
            base.tuning,
            base.loss,
            base.train,
        )
        assert config.data.on_bad_record == "error" and config.data.val_fraction == 0.1
    assert (geotext.data.benchmark, geotext.data.root, geotext.data.view) == (
        "geotext1652",
        "data/GeoText1652",
        "all",
    )
    assert (cvgtext.data.benchmark, cvgtext.data.root) == ("cvgtext", "data/CVG-Text")
    assert (cvgtext.data.city, cvgtext.data.version, cvgtext.data.target) == ("NewYork", "mixed", "satellite")
    # On the meta device: no weights are loaded. The cvgtext config's model and tuning are equal
    # to these (asserted above), so its count is the same.
    assert count_for_config(geotext)["trainable"] == RECIPE_TRAINABLE[backbone]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("benchmark", ["geotext1652", "cvgtext"])
def test_released_recipes_differ_from_the_paper_configs_only_by_the_released_switches(
    backbone: str, benchmark: str
) -> None:
    """configs/released-*.yaml: the paper config with geoloc's safeguards switched off, and
    nothing else changed."""
    paper = load_config(CONFIGS / f"paper-{backbone}-{benchmark}.yaml")
    released = load_config(CONFIGS / f"released-{backbone}-{benchmark}.yaml")
    assert (released.tuning, released.loss) == (paper.tuning, paper.loss)
    assert released.loss.temperature == 0.02
    switched = {
        "model.dtype": "bfloat16",
        "train.precision": "bfloat16",
        "train.no_decay": "names",
        "train.warmup": "released",
        "data.val_fraction": 0.0,
    }
    for key, value in switched.items():
        section, name = key.split(".")
        assert getattr(getattr(released, section), name) == value, key
        setattr(getattr(released, section), name, getattr(getattr(paper, section), name))
    assert released == paper  # every other key is the paper config's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "data: {benchmark: geotext}\n",
            "data.benchmark: 'geotext' is not one of manifest, geotext1652, cvgtext",
        ),
        ("data: {on_bad_record: ignore}\n", "data.on_bad_record: 'ignore' is not one of error, skip"),
        ("data: {target: map}\n", "data.target"),
        ("data: {view: aerial}\n", "data.view"),
        ("data: {version: all}\n", "data.version"),
        ("data: {val_fraction: 1.5}\n", "data.val_fraction"),
        ("data: {val_fraction: -0.1}\n", "must be at least 0 (0: train on everything)"),
        ("train: {no_decay: 1d}\n", "train.no_decay: '1d' is not one of ndim, names"),
        ("train: {warmup: floor}\n", "train.warmup: 'floor' is not one of ceil, released"),
        ("data: {max_val_images: 0}\n", "data.max_val_images"),
        ("train: {lr: 1.0e-4}\ntrain: {epochs: 2}\n", "key 'train' is given twice, line 2"),
        ("data: {root: a, root: b}\n", "key 'root' is given twice"),
        ("model: {backbone: null}\n", "model.backbone: expected str"),
    ],
)
def test_bad_data_section(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_on_bad_record_override() -> None:
    assert load_config(None).data.on_bad_record == "error"
    assert load_config(None, ["data.on_bad_record=skip"]).data.on_bad_record == "skip"
    with pytest.raises(ConfigError, match="data.on_bad_record"):
        load_config(None, ["data.on_bad_record=maybe"])


def test_val_fraction_zero_and_the_released_switches_are_accepted() -> None:
    config = load_config(None, ["data.val_fraction=0", "train.no_decay=names", "train.warmup=released"])
    assert (config.data.val_fraction, config.train.no_decay, config.train.warmup) == (
        0.0,
        "names",
        "released",
    )
    default = load_config(None)
    assert (default.data.val_fraction, default.train.no_decay, default.train.warmup) == (0.1, "ndim", "ceil")
    assert default.loss.temperature == 0.02


def test_shipped_configs_resolve_exactly_as_before_they_extended_one_another() -> None:
    """tests/resolved_configs.json was written from the configs as they were before `base:`."""
    import json

    before = json.loads((Path(__file__).parent / "resolved_configs.json").read_text())
    shipped = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert shipped == sorted(before)
    for name in shipped:
        assert load_config(CONFIGS / name).to_dict() == before[name], name
    # The variants state only what they change.
    for name in shipped:
        if name != "paper-internvl3_5-1b.yaml" and name.startswith(("paper-", "released-", "scale-")):
            assert "\nbase: " in (CONFIGS / name).read_text(), name


def test_base_is_read_relative_to_the_file_and_merged_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "root.yaml").write_text(
        "model: {backbone: tiny-internvl, pooling: mean}\ntrain: {lr: 1.0e-4, epochs: 3}\n"
    )
    (tmp_path / "recipes" / "middle.yaml").write_text("base: root.yaml\ntrain: {epochs: 5}\n")
    (tmp_path / "run.yaml").write_text("base: recipes/middle.yaml\nmodel: {pooling: eos}\n")
    config = load_config(tmp_path / "run.yaml", ["train.batch_size=4"])
    assert (config.model.backbone, config.model.pooling) == ("tiny-internvl", "eos")
    assert (config.train.lr, config.train.epochs, config.train.batch_size) == (1e-4, 5, 4)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "'base' goes round in a cycle"),
        ({"a.yaml": "base: a.yaml\n"}, "'base' goes round in a cycle"),
        ({"a.yaml": "base: missing.yaml\n"}, "missing.yaml is not a file"),
        ({"a.yaml": "base: [b.yaml]\n"}, "base: expected the file name of another config"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "train: {epochs: many}\n"}, "train.epochs: expected int"),
    ],
)
def test_bad_bases_are_refused_in_one_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(info.value) and "a.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("key", "choices"),
    [
        ("model.pooling", "eos, mean, query"),
        ("model.padding_side", "left, right"),
        ("model.dtype", "float32, bfloat16"),
        ("tuning.strategy", "frozen, lora, dora, full"),
        ("loss.direction", "text_to_image, symmetric"),
        ("data.benchmark", "manifest, geotext1652, cvgtext"),
        ("train.precision", "auto, float32, bfloat16"),
        ("train.tile_features", "auto, cache, compute"),
        ("train.sharding", "ddp, fsdp"),
        ("tuning.targets", "llm-attn, llm-attn-mlp, vision-attn, paper"),
    ],
)
def test_every_choice_is_checked_when_the_config_is_read(key: str, choices: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: 'cahce' is not one of {choices}"):
        load_config(None, [f"{key}=cahce"])


def test_a_mistyped_choice_stops_train_before_any_image_is_decoded(
    tiny_city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Before: train.tile_features was checked by the trainer, after every image was decoded."""
    from geoloc import cli
    from geoloc.train import splits

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were decoded before the config was checked")

    monkeypatch.setattr(splits, "verify_images", no_decoding)
    status = cli.main(
        [
            "train",
            str(CONFIGS / "synthetic-tiny.yaml"),
            "--set",
            f"data.train={tiny_city}",
            "--set",
            "train.tile_features=cahce",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert status == 2
    assert "train.tile_features: 'cahce' is not one of auto, cache, compute" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_demo_reads_the_shipped_recipe() -> None:
    from geoloc.demo import run as demo

    manifest = Path("city/manifest.jsonl")
    expected = load_config(
        CONFIGS / "synthetic-tiny.yaml", [f"data.train={manifest}", "train.max_minutes=2.5", "train.seed=3"]
    )
    assert demo.demo_config(manifest, 2.5, 3) == expected
    assert not isinstance(demo.DEMO_CONFIG, dict)  # no copy of the recipe in the code


def test_bfloat16_has_one_spelling_and_the_older_one_still_reads(tmp_path: Path) -> None:
    """Run folders saved before the spelling was unified say `precision: bf16`."""
    old = tmp_path / "config.yaml"
    old.write_text("model: {dtype: bf16}\ntrain: {precision: bf16}\n")
    config = load_config(old, ["model.text_template=bf16 {text}"])
    assert (config.model.dtype, config.train.precision) == ("bfloat16", "bfloat16")
    assert config.model.text_template == "bf16 {text}"  # free text is never respelled
    save_config(config, tmp_path / "saved.yaml")
    assert "bf16" not in (tmp_path / "saved.yaml").read_text().replace("bf16 {text}", "")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_workers=many", "train.num_workers: 'many' is not one of auto, int"),
        ("train.epochs=2.5", "train.epochs: expected int, got float 2.5"),
        ("train.progress=1", "train.progress: expected bool, got int 1"),
        (
            "tuning.init=loftq",
            "tuning.init: 'loftq' is not one of default, gaussian, pissa, olora, orthogonal",
        ),
        ("data.version=both", "data.version: 'both' is not one of mixed, panorama, photos"),
    ],
)
def test_values_are_checked_strictly_with_one_line_messages(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_a_value_yaml_reads_as_a_date_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {text_template: 2026-12-06}\n")
    with pytest.raises(ConfigError, match="not text, a number"):
        load_config(path)
