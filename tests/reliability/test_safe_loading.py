"""Safe loading: nothing geoloc reads can make it run code, and old or future formats are refused.

Each hostile file below would write a marker file if it ever got executed: the tests check that the
marker never appears, not only that an error is raised.
"""

from __future__ import annotations

import ast
import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from geoloc.cli import main
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.presets import preset_model, preset_processing
from geoloc.encoder.saved import SPEC_FILE
from geoloc.errors import GeolocError

SRC = Path(__file__).resolve().parents[2] / "src" / "geoloc"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class _Payload:
    """Pickles to a call that writes `marker`: loading it with a full unpickler runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _plant_pickle(path: Path, marker: Path) -> None:
    torch.save({"model.text_model.embed_tokens.weight": _Payload(marker)}, path)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain transformers model folder (safetensors) of the tiny SmolVLM."""
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    preset_model("tiny-smolvlm").save_pretrained(folder)
    tokenizer, processor = preset_processing("tiny-smolvlm")
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "encoder"
    from geoloc.encoder.tuning import TuningConfig

    encoder = MllmEncoder.load(
        "tiny-smolvlm", spec_overrides={"tuning": TuningConfig(rank=4, init="gaussian")}
    )
    encoder.save(folder)
    return folder


def _with_remote_code(source: Path, target: Path, marker: Path, model_type: str | None) -> Path:
    """A copy of `source` whose config and tokenizer config ask for code shipped beside them."""
    shutil.copytree(source, target)
    (target / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('code ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {
        name: "evil.EvilConfig" for name in ("AutoConfig", "AutoModel", "AutoModelForVision2Seq")
    }
    if model_type:
        config["model_type"] = model_type
    (target / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer["auto_map"] = {"AutoTokenizer": ["evil.EvilConfig", None]}
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return target


def test_code_shipped_with_a_model_is_never_run(model_folder: Path, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "code-ran"
    # Were transformers to ask "run the custom code? [y/N]", this user would say yes.
    monkeypatch.setattr(builtins, "input", lambda *args, **kwargs: "y")
    # A known architecture that also names remote code: loaded with the built-in classes.
    known = _with_remote_code(model_folder, tmp_path / "known", marker, None)
    vectors = MllmEncoder.load(known).encode_text(["a red roof"])
    assert vectors.shape == (1, 128)
    # An architecture only its shipped code defines: refused, with the folder named.
    unknown = _with_remote_code(model_folder, tmp_path / "unknown", marker, "evil")
    with pytest.raises(GeolocError, match="cannot load model .*unknown"):
        MllmEncoder.load(unknown)
    assert not marker.exists()


def test_weights_and_adapters_are_read_only_from_safetensors(
    model_folder: Path, saved_lora: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    # A saved encoder holds no pickled weights at all.
    written = [p.name for p in saved_lora.rglob("*") if p.is_file()]
    assert "adapter_model.safetensors" in written
    assert not [name for name in written if name.endswith(PICKLE_SUFFIXES)], written
    reference = MllmEncoder.load(saved_lora).encode_text(["a red roof"])

    # A pickle planted beside the safetensors is ignored: same vectors, nothing run.
    planted = tmp_path / "planted"
    shutil.copytree(saved_lora, planted)
    _plant_pickle(planted / "adapter" / "adapter_model.bin", marker)
    assert (MllmEncoder.load(planted).encode_text(["a red roof"]) == reference).all()
    # With the safetensors gone, the pickle is refused rather than used.
    (planted / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(GeolocError, match="no adapter_model.safetensors"):
        MllmEncoder.load(planted)

    # The same for a backbone: pytorch_model.bin beside model.safetensors is ignored ...
    folder = tmp_path / "backbone"
    shutil.copytree(model_folder, folder)
    _plant_pickle(folder / "pytorch_model.bin", marker)
    MllmEncoder.load(folder)
    # ... and on its own it is refused.
    (folder / "model.safetensors").unlink()
    with pytest.raises(GeolocError, match="cannot load model"):
        MllmEncoder.load(folder)
    assert not marker.exists()


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    owner, name = dotted.rsplit(".", 1)
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == owner
    ]


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def test_the_source_never_unpickles_or_trusts_remote_code() -> None:
    """An AST scan of src/: the rules hold for every call, present and future."""
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    problems, torch_loads = [], 0
    for file in files:
        tree = ast.parse(file.read_text(encoding="utf-8"))
        where = file.relative_to(SRC.parent)
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            if _keyword(call, "weights_only") is not True:
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "np.load") + _calls(tree, "numpy.load"):
            if _keyword(call, "allow_pickle") not in (None, False):
                problems.append(f"{where}:{call.lineno}: np.load with allow_pickle")
        for call in _calls(tree, "yaml.load") + _calls(tree, "yaml.load_all"):
            loader = _keyword(call, "Loader")
            if not (isinstance(loader, ast.Name) and loader.id in ("_UniqueKeyLoader", "SafeLoader")):
                problems.append(f"{where}:{call.lineno}: yaml.load without a safe loader")
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    problems.append(f"{where}:{node.value.lineno}: trust_remote_code not False")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for name in names):
                    problems.append(f"{where}:{node.lineno}: imports a pickle library")
    assert torch_loads >= 2  # the scan does see the checkpoint loaders
    assert not problems, "\n".join(problems)


def test_a_yaml_config_cannot_build_python_objects(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(
        f"train: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('x')\"]\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert str(config) in error and "invalid YAML" in error and "python/object/apply" in error
    assert not marker.exists() and not run.exists()


def _set_version(file: Path, key: str, version: int) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    data[key] = version
    file.write_text(json.dumps(data), encoding="utf-8")


def test_incompatible_format_versions_are_refused_and_named(
    saved_lora: Path, tiny_city: Path, tmp_path: Path, capsys
) -> None:
    # A run directory whose model was saved by a future geoloc: loading it names both versions.
    run = tmp_path / "run"
    shutil.copytree(saved_lora, run / "best")
    _set_version(run / "best" / SPEC_FILE, "format_version", 7)
    with pytest.raises(GeolocError, match="encoder format version 7, this geoloc reads version 1"):
        MllmEncoder.load(run)
    # Resuming a run whose checkpoint is of another version: refused the same way, one line.
    checkpoint = run / "checkpoints" / "latest"
    shutil.copytree(run / "best", checkpoint / "encoder")
    torch.save({"step": 1}, checkpoint / "trainer_state.pt")
    (run / "metrics.jsonl").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{train: {json.dumps(str(tiny_city))}}}\ntrain: {{progress: false}}\n")
    assert main(["train", str(config), "--out", str(run), "--resume"]) == 2
    assert "encoder format version 7" in capsys.readouterr().err

    # An index folder of another version: search, info and serve all refuse it.
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text(json.dumps({"format_version": 4, "model": {}}))
    for argv in (["index", "info", str(index)], ["serve", str(index)]):
        assert main(argv) == 2, argv
        assert "index format version 4; this geoloc reads versions 1, 2 and 3" in capsys.readouterr().err

    # An embedding folder (embed.json) written under another format: not resumed into.
    out = tmp_path / "embed"
    out.mkdir()
    (out / "embed.json").write_text(json.dumps({"format_version": 2}))
    assert main(["embed", "tiny-smolvlm", "--data", str(tiny_city), "--out", str(out), "--quiet"]) == 2
    assert "format_version" in capsys.readouterr().err
    assert not (out / "embeddings.npz").exists()
