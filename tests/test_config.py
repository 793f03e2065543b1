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


def test_shipped_configs_load() -> None:
    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        config = load_config(path)
        assert config.model.backbone and config.data.train
    recipe = load_config(Path(__file__).parent.parent / "configs" / "paper-internvl3_5-1b.yaml")
    assert (recipe.tuning.strategy, recipe.tuning.rank, recipe.tuning.alpha) == ("dora", 16, 128.0)
    assert recipe.loss.temperature == 0.03 and recipe.loss.direction == "text_to_image"
