"""Two CPU processes (gloo) train exactly like one process with the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from ports import free_port
from safetensors.torch import load_file

from geoloc.train.distributed import gather_with_grad
from geoloc.world import World

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _gather_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows = 3 if rank == 0 else 2  # uneven shares, as a last batch can be
    local = torch.full((rows, 4), float(rank + 1), requires_grad=True)
    gathered = gather_with_grad(local, World(rank=rank, size=2))
    # Every process weighs every row; the gradient of a row must add all processes' weights.
    weights = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4) * (rank + 1)
    (gathered * weights).sum().backward()
    torch.save({"gathered": gathered.detach(), "grad": local.grad}, f"{out}/rank{rank}.pt")
    dist.barrier()  # neither process tears the group down while the other still uses it
    dist.destroy_process_group()


def test_gathered_rows_hold_every_process_and_carry_gradients_back(tmp_path: Path) -> None:
    mp.spawn(_gather_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = torch.cat([torch.full((3, 4), 1.0), torch.full((2, 4), 2.0)])
    for result in results:
        assert torch.equal(result["gathered"], expected)  # the other process's rows are there
    weights = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    summed = weights * 1 + weights * 2  # both processes' weights reach each row
    assert torch.equal(results[0]["grad"], summed[:3])
    assert torch.equal(results[1]["grad"], summed[3:])


def _launch(
    city: Path, out: Path, processes: int, fault: str = "", resume: bool = False, **train: object
) -> subprocess.CompletedProcess:
    """`geoloc train` on the tiny model, under torchrun when `processes` > 1."""
    config = {
        "model": {"backbone": "tiny-smolvlm"},
        # No dropout: each process draws its own masks, so only a deterministic model can match.
        "tuning": {"strategy": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "targets": "paper"},
        "loss": {"temperature": 0.05, "direction": "symmetric", "learnable_temperature": True},
        "data": {"train": str(city)},
        "train": {
            "epochs": 1, "max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1,
            "save_every": 0, "progress": False, "device": "cpu", **train,
        },
    }  # fmt: skip
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "geoloc", "train", str(path), "--out", str(out)]
    if processes > 1:
        command = [
            str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes),
            "-m", "geoloc", "train", str(path), "--out", str(out),
        ]  # fmt: skip
    if resume:
        command.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOLOC_FAULT": fault}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _results(out: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    adapter = load_file(str(out / "final" / "adapter" / "adapter_model.safetensors"))
    return [r for r in records if r["type"] == "train"], adapter


def _assert_same_training(
    want: tuple[list[dict], dict[str, torch.Tensor]], got: tuple[list[dict], dict[str, torch.Tensor]]
) -> None:
    """The same logged losses and temperatures, step by step, and the same final adapter weights."""
    (want_logs, want_adapter), (got_logs, got_adapter) = want, got
    for a, b in zip(want_logs, got_logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["temperature"] == pytest.approx(b["temperature"], abs=1e-6)
    assert want_adapter.keys() == got_adapter.keys() and len(want_adapter) > 0
    for name in want_adapter:
        torch.testing.assert_close(got_adapter[name], want_adapter[name], atol=1e-5, rtol=0, msg=name)


def _train(
    city: Path, out: Path, processes: int, **train: object
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    done = _launch(city, out, processes, **train)
    assert done.returncode == 0, done.stderr[-3000:]
    return _results(out)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_two_processes_match_one_process_with_the_whole_batch_and_mined_batches(
    tiny_city: Path, tmp_path: Path
) -> None:
    # Batches mined before every step: the first process mines, and every process takes its plan.
    mined = {"batching": "mined", "mine_every": 1}
    one_logs, one = _train(tiny_city, tmp_path / "one", processes=1, **mined)
    # Two processes, and gradient caching in chunks of 2 on top: still the same updates.
    two_logs, two = _train(tiny_city, tmp_path / "two", processes=2, grad_cache_chunk=2, **mined)
    for run in ("one", "two"):
        logged = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged if r["type"] == "mining"] == [0, 1, 2]
    assert [r["processes"] for r in one_logs] == [1, 1, 1]
    assert [r["processes"] for r in two_logs] == [2, 2, 2]
    _assert_same_training((one_logs, one), (two_logs, two))
    assert max(float(t.abs().max()) for t in one.values()) > 0.01  # the adapters did move


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_fsdp_shards_the_language_model_and_trains_like_one_process(tiny_city: Path, tmp_path: Path) -> None:
    # An odd batch: the two shares (4 and 3 rows) are padded to equal ones, since every process
    # must run the sharded layers in step; gradient caching (chunks of 2) on top.
    one_logs, one = _train(tiny_city, tmp_path / "one", processes=1, batch_size=7)
    # Gradient checkpointing too, as the shipped 8B configuration uses it with FSDP.
    fsdp = {"sharding": "fsdp", "gradient_checkpointing": True, "grad_cache_chunk": 2}
    two_logs, two = _train(tiny_city, tmp_path / "fsdp", processes=2, batch_size=7, **fsdp)
    _assert_same_training((one_logs, one), (two_logs, two))
    # Each process holds half of the decoder layers' frozen weights.
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.train.sharding import decoder_layers

    encoder = MllmEncoder.load(tmp_path / "one" / "final", trainable=True)
    layers = decoder_layers(encoder)
    frozen = sum(p.numel() * p.element_size() for x in layers for p in x.parameters() if not p.requires_grad)
    whole, sharded = one_logs[0]["parameter_bytes_per_process"], two_logs[0]["parameter_bytes_per_process"]
    assert sharded == pytest.approx(whole - frozen / 2, rel=1e-3)


def test_fsdp_refuses_a_fully_tuned_backbone() -> None:
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.errors import ConfigError
    from geoloc.train.sharding import check_shardable

    encoder = MllmEncoder.load("tiny-smolvlm")
    with pytest.raises(ConfigError, match="use ddp"):
        check_shardable(encoder, "full", saves_backbone=False)
    check_shardable(encoder, "lora", saves_backbone=False)  # adapters: accepted


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_a_killed_fsdp_run_resumes_to_the_uninterrupted_result(tiny_city: Path, tmp_path: Path) -> None:
    settings = {"batch_size": 7, "max_steps": 4, "save_every": 2}
    one_logs, one = _train(tiny_city, tmp_path / "one", processes=1, **settings)
    run = tmp_path / "fsdp"
    # Both processes SIGKILL themselves in their third step, after the step-2 checkpoint.
    killed = _launch(tiny_city, run, 2, fault="train.step:3", sharding="fsdp", **settings)
    assert killed.returncode != 0 and not (run / "final").exists()
    resumed = _launch(tiny_city, run, 2, resume=True, sharding="fsdp", **settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs, adapter = _results(run)
    assert [r["step"] for r in logs] == [1, 2, 3, 4]  # steps 3 and 4 logged once, after the resume
    _assert_same_training((one_logs, one), (logs, adapter))


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")
def test_fsdp_process_with_an_empty_share_runs_in_step(tiny_city: Path, tmp_path: Path) -> None:
    # 3 processes, batches of 2: one process never has a row of its own, only a filler row.
    one_logs, one = _train(tiny_city, tmp_path / "one", processes=1, batch_size=2, max_steps=2)
    three_logs, three = _train(
        tiny_city, tmp_path / "three", processes=3, batch_size=2, max_steps=2, sharding="fsdp"
    )
    assert [r["processes"] for r in three_logs] == [3, 3]
    _assert_same_training((one_logs, one), (three_logs, three))
