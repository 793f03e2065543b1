"""`geoloc embed`: sharded, resumable, several processes, same vectors as one plain pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geoloc.cli import main
from geoloc.data.manifest import read_manifest
from geoloc.encoder.mllm import MllmEncoder
from geoloc.eval import gallery

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _load(out: Path) -> tuple[list[str], np.ndarray]:
    with np.load(out / "embeddings.npz") as data:
        return list(data["image_keys"]), data["image_emb"]


@pytest.fixture(scope="module")
def reference(tiny_city: Path) -> tuple[list[str], np.ndarray]:
    records = read_manifest(tiny_city).records
    return [r.key for r in records], MllmEncoder.load("tiny-smolvlm").encode_images(
        [r.image for r in records]
    )


def test_embed_writes_the_plain_vectors_in_manifest_order(tiny_city: Path, tmp_path: Path, reference) -> None:
    args = ["embed", "tiny-smolvlm", "--data", str(tiny_city), "--out", str(tmp_path / "e"), "--quiet"]
    assert main([*args, "--shard-size", "16"]) == 0
    keys, vectors = _load(tmp_path / "e")
    assert keys == reference[0]
    np.testing.assert_allclose(vectors, reference[1], atol=1e-5)
    assert len(list((tmp_path / "e" / "shards").glob("shard-*.npz"))) == 3  # 40 tiles / 16
    # Another shard size in the same folder is another run: refused, nothing changed.
    assert main([*args, "--shard-size", "8"]) == 2


def test_an_interrupted_embedding_resumes_without_redoing_shards(
    tiny_city: Path, tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    real_write = gallery._write_shard

    def write_then_stop(path: Path, keys: list[str], vectors: np.ndarray) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while encoding the third shard
        written.append(path.name)
        real_write(path, keys, vectors)

    monkeypatch.setattr(gallery, "_write_shard", write_then_stop)
    args = ["embed", "tiny-smolvlm", "--data", str(tiny_city), "--out", str(tmp_path / "e"), "--quiet"]
    assert main([*args, "--shard-size", "10"]) == 130
    assert not (tmp_path / "e" / "embeddings.npz").exists()  # never looks finished
    assert sorted(p.name for p in (tmp_path / "e" / "shards").glob("*.npz")) == written

    monkeypatch.setattr(gallery, "_write_shard", lambda *a: (written.append("again"), real_write(*a)))
    assert main([*args, "--shard-size", "10"]) == 0
    assert written.count("again") == 2  # only the two missing shards of four
    keys, vectors = _load(tmp_path / "e")
    assert keys == reference[0]
    np.testing.assert_allclose(vectors, reference[1], atol=1e-5)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_two_processes_merge_to_the_one_process_result(tiny_city: Path, tmp_path: Path, reference) -> None:
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "geoloc", "embed", "tiny-smolvlm",
        "--data", str(tiny_city), "--out", str(tmp_path / "e"), "--shard-size", "7", "--quiet",
        "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 shards" in done.stdout and done.stdout.count("embedded") == 1
    keys, vectors = _load(tmp_path / "e")
    assert keys == reference[0]
    np.testing.assert_allclose(vectors, reference[1], atol=1e-5)
