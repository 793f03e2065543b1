"""The training run: contrastive tuning of a GeoEncoder, resumable exactly.

A run directory holds:
    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per logged step and per validation
    checkpoints/latest/    encoder + trainer state (optimizer, scheduler, RNG, position), atomic
    best/                  the encoder with the best validation primary metric (text->image R@1)
    final/                 the encoder at the end of training
Model selection uses a validation split carved from the training data, never the test split.
With `data.val_fraction: 0` and no val split nothing validates: there is no best/, and a run
directory loads as its final/ (the released recipe trains on everything and keeps the last).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from geoloc import atomic, faults
from geoloc.config import Config, NoDecayRule, TrainPrecision, WarmupRule, save_config
from geoloc.data.images import load_image
from geoloc.data.manifest import Dataset
from geoloc.encoder.base import SAVED_BACKBONE, resolve_device
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.mllm import GeoEncoder
from geoloc.encoder.tile_features import TileFeatureStore, vision_is_adapted
from geoloc.errors import ConfigError, GeolocError
from geoloc.eval.evaluate import evaluate
from geoloc.eval.results import primary_value
from geoloc.train.batching import epoch_batches
from geoloc.train.loss import InfoNCE
from geoloc.train.sharding import check_shardable, local_parameter_bytes, shard_language_model
from geoloc.train.splits import Splits, carve_splits
from geoloc.train.step import ContrastiveStep, PairEncoder
from geoloc.world import World, join_world

CHECKPOINT = "checkpoints/latest"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _truncate(path: Path, size: int | None) -> None:
    """Cut `path` back to `size` bytes (None: a checkpoint from before sizes were recorded)."""
    if size is not None and _file_size(path) > size:
        with open(path, "r+b") as f:
            f.truncate(size)


class PixelCache:
    """Processed pixels per training image, kept when they fit in memory (no augmentation)."""

    def __init__(self, encoder: GeoEncoder, dataset: Dataset, max_bytes: int = 2 << 30):
        self.encoder, self.dataset = encoder, dataset
        per_image = 3 * 4 * encoder.image_size**2
        self.enabled = per_image * len(dataset.records) <= max_bytes
        self.store: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        missing = [i for i in dict.fromkeys(indices) if i not in self.store]
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        if missing:
            records = [self.dataset.records[i] for i in missing]
            pixels = self.encoder.pixel_inputs([load_image(r.image, record=r.key) for r in records])
            fresh = {i: {k: v[n : n + 1] for k, v in pixels.items()} for n, i in enumerate(missing)}
            if self.enabled:
                self.store.update(fresh)
        return _stack([fresh[i] if i in fresh else self.store[i] for i in indices])


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([item[k] for item in items]) for k in items[0]}


RELEASED_NO_DECAY = ("bias", "LayerNorm.weight")


def decays(name: str, param: torch.nn.Parameter, rule: NoDecayRule) -> bool:
    """Whether weight decay applies to a parameter under `train.no_decay`.

    "ndim": every parameter of two or more dimensions decays; biases, norms and DoRA magnitude
    vectors (all 1-D) do not, since decaying a magnitude pulls a pretrained weight's column norms
    towards zero. "names": the released code's rule, by name only: everything decays except
    parameters whose names contain `bias` or `LayerNorm.weight` (so DoRA magnitudes decay).
    """
    if rule == "names":
        return not any(part in name for part in RELEASED_NO_DECAY)
    return param.ndim >= 2  # "ndim"; the config reader refused any other rule


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], config: Config) -> torch.optim.Optimizer:
    rule = config.train.no_decay
    decay = [p for n, p in params if decays(n, p, rule)]
    no_decay = [p for n, p in params if not decays(n, p, rule)]
    groups = [
        {"params": decay, "weight_decay": config.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.train.lr)


def warmup_steps(total_steps: int, ratio: float, rule: WarmupRule) -> int:
    """Warm-up length under `train.warmup`: "ceil" rounds up (at least 1 when ratio > 0), so a
    short run still warms up; "released" truncates, int(total x ratio), as the released code."""
    if rule == "released":
        return int(total_steps * ratio)
    return max(1, math.ceil(total_steps * ratio)) if ratio > 0 else 0  # "ceil"


def lr_factor(step: int, total_steps: int, config: Config) -> float:
    """The learning-rate multiplier of optimizer step `step` (from 0).

    Warm-up rises linearly: under "ceil" from 1/warm-up at step 0 to 1 at its last step (no step
    is wasted at lr 0); under "released" from 0 at step 0, reaching 1 once warm-up is over. Then
    the factor falls linearly to `min_lr_ratio` at the last step.
    """
    train = config.train
    warmup = warmup_steps(total_steps, train.warmup_ratio, train.warmup)
    if step < warmup:
        return (step + 1) / warmup if train.warmup == "ceil" else step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = train.min_lr_ratio
    return max(floor, 1.0 - (1.0 - floor) * progress)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, config: Config) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))


def _uses_bf16(device: torch.device, precision: TrainPrecision) -> bool:
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def _autocast(device: torch.device, precision: TrainPrecision) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_uses_bf16(device, precision))


def rng_state() -> dict[str, Any]:
    """This process's random state: the CPU generator and every visible CUDA device's.

    Dropout (LoRA's included) on a GPU draws from that device's generator, not the CPU's, so an
    exact resume on GPUs needs both.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`. The CUDA states go back only onto as many devices as were saved:
    a run resumed elsewhere (on the CPU, or other GPUs) continues, but not bit for bit."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda") or []
    if not cuda:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available != len(cuda):
        warnings.warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA device(s) but {available} "
            "are visible: the resumed run's dropout will not repeat the interrupted one's",
            stacklevel=2,
        )
        return
    torch.cuda.set_rng_state_all(cuda)


class Trainer:
    def __init__(
        self, config: Config, run_dir: str | Path, world: World | None = None, splits: Splits | None = None
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.world = world or join_world()
        self._given_splits = splits  # already carved (and checked) by the caller, else carved here

    # -- set-up ------------------------------------------------------------------------------
    def _build(self, resume_from: Path | None) -> None:
        config = self.config
        self.device = resolve_device(config.train.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.train.seed)
        self.sharded = config.train.sharding == "fsdp" and self.world.distributed
        # Sharded: built on the CPU and sharded before it moves, so it is never whole on a GPU.
        load_device = "cpu" if self.sharded else str(self.device)
        if resume_from is not None:
            self.encoder = load_encoder(resume_from / "encoder", device=load_device, trainable=True)
        else:
            # Every model setting the encoder records in its spec comes from the config.
            overrides = config.model.embedding_settings() | {"tuning": config.tuning}
            self.encoder = load_encoder(
                config.model.backbone,
                device=load_device,
                dtype=config.model.dtype,
                spec_overrides=overrides,
            )
        if config.train.gradient_checkpointing:
            self.encoder.base_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.feature_store = self._feature_store()
        if self.feature_store is not None and self.feature_store.precision == "float32":
            # Validation encodes in float32 too, so the encoder reads the same stored features.
            self.encoder = self.encoder.rebuilt(tile_features=self.feature_store)
        self.loss_fn = InfoNCE(
            config.loss.temperature, config.loss.learnable_temperature, config.loss.direction
        )
        self.loss_fn.to(self.device)
        params = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        params += [(n, p) for n, p in self.loss_fn.named_parameters() if p.requires_grad]
        if not params:
            raise GeolocError(
                "nothing to train: tuning.strategy 'frozen' with eos/mean pooling has no trainable weights"
            )
        self.params = [p for _, p in params]
        self.step_model: torch.nn.Module = PairEncoder(self.encoder)
        averaged: list[torch.nn.Parameter] = []  # gradients averaged by the step, not by DDP
        if self.sharded:
            check_shardable(
                self.encoder,
                self.encoder.spec.tuning.strategy,
                saves_backbone=self.encoder.spec.backbone == SAVED_BACKBONE,
            )
            shard_language_model(self.encoder, self.device)
            averaged = [p for p in self.encoder.parameters() if p.requires_grad]
        elif self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.step_model, device_ids=device_ids)
        self.contrastive_step = ContrastiveStep(
            self.step_model,
            self.loss_fn,
            lambda: _autocast(self.device, config.train.precision),
            self.device,
            self.world,
            chunk=config.train.grad_cache_chunk,
            averaged=averaged,
        )
        self.splits = self._given_splits or carve_splits(config)
        texts, image_index = self.splits.train.texts_with_image_index()
        self.texts, self.image_index = texts, image_index
        groups = self.splits.train.groups
        self.text_groups = [groups[i] for i in image_index]
        self.steps_per_epoch = len(
            epoch_batches(self.text_groups, config.train.batch_size, config.train.seed, 0)
        )
        total = self.steps_per_epoch * config.train.epochs
        self.total_steps = min(total, config.train.max_steps) if config.train.max_steps else total
        self.parameter_bytes = local_parameter_bytes(self.encoder)
        self.optimizer = _optimizer(params, config)
        self.scheduler = _schedule(self.optimizer, self.total_steps, config)
        self.pixels = PixelCache(self.encoder, self.splits.train)
        self.step, self.epoch, self.batch_in_epoch, self.best_r1 = 0, 0, 0, -1.0
        self.elapsed = 0.0

    def _feature_store(self) -> TileFeatureStore | None:
        """Tile features from disk when the vision side is frozen (train.tile_features)."""
        train = self.config.train
        if not isinstance(self.encoder, GeoEncoder):  # a dual encoder has no LLM to feed features to
            if train.tile_features == "cache":
                raise ConfigError("train.tile_features=cache is for MLLM backbones, not dual encoders")
            return None
        adapted = vision_is_adapted(self.encoder)
        if train.tile_features == "cache" and adapted:
            raise ConfigError(
                "train.tile_features=cache needs a frozen vision tower and projector, but "
                f"tuning (strategy {self.config.tuning.strategy!r}, targets {self.config.tuning.targets!r}) "
                "adapts them: use targets such as llm-attn, or tile_features=compute"
            )
        if train.tile_features == "compute" or adapted:
            return None
        bf16 = _uses_bf16(self.device, train.precision)
        store = TileFeatureStore(
            self.encoder,
            train.tile_feature_dir or None,
            autocast=lambda: _autocast(self.device, train.precision),
            precision="bf16" if bf16 else "float32",
        )
        return store

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "rng_per_process": rng_states,  # every process's rng_state(), in rank order
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_r1": self.best_r1,
            "elapsed": self.elapsed,
            "metrics_bytes": _file_size(self.run_dir / METRICS),
        }

    def save_checkpoint(self) -> None:
        # Every process holds the same weights and optimizer state: the first one writes. The
        # random state differs per process (each draws dropout on its own GPU): all are kept.
        rng_states = self.world.gather_objects(rng_state())
        if self.world.is_main:
            with atomic.atomic_dir(self.run_dir / CHECKPOINT) as tmp:
                self.encoder.save(tmp / "encoder")
                faults.point("checkpoint.write")
                torch.save(self._state(rng_states), tmp / TRAINER_STATE)
        self.world.barrier()

    def _restore(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        per_process = state.get("rng_per_process")
        if per_process:  # a checkpoint from before every device's state was kept has only the CPU's
            set_rng_state(per_process[min(self.world.rank, len(per_process) - 1)])
        else:
            torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best_r1 = state["batch_in_epoch"], state["best_r1"]
        self.elapsed = state["elapsed"]
        if self.world.is_main:  # what was logged after this checkpoint is logged again from here
            _truncate(self.run_dir / METRICS, state.get("metrics_bytes"))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self, batch: list[int]) -> float:
        """One optimizer step on a global batch; this process encodes its share of it."""
        self.encoder.train()
        if self.sharded:  # every process runs the same passes: equal shares, padded
            local, offset, real = self.world.padded_slice_of(batch)
        else:
            local, offset = self.world.slice_of(batch)
            real = len(local)
        text_inputs = self.encoder.text_inputs([self.texts[i] for i in local])
        images = [self.image_index[i] for i in local]
        tokens = self.encoder.image_token_inputs(len(images))
        if self.feature_store is not None:
            records = [self.splits.train.records[i] for i in images]
            features = self.feature_store.features([r.image for r in records], [r.key for r in records])
            image_inputs = tokens | {"image_features": features}
        else:
            image_inputs = tokens | self.pixels(images)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.contrastive_step(text_inputs, image_inputs, offset, len(batch), real)
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        self.optimizer.step()
        faults.point("train.step")
        self.scheduler.step()
        return loss

    def validate(self) -> dict[str, Any]:
        """Validation R@1 on the first process (the others wait); keeps best/ up to date.

        A sharded language model runs only with every process in step, so then every process
        encodes the whole validation set and the first one keeps the result.
        """
        if not self.splits.val.records:  # data.val_fraction 0 without a val split: nothing to score
            return {}
        if not self.world.is_main and not self.sharded:
            self.world.barrier()
            return {}
        metrics, _ = evaluate(self.encoder, self.splits.val, batch_size=64, show_progress=False)
        if not self.world.is_main:
            self.world.barrier()
            return {}
        record = {"type": "val", "step": self.step, "epoch": self.epoch, **metrics}
        self._log(record)
        faults.point("validate")
        score = primary_value(metrics)  # the model is selected by the results' primary metric
        if score > self.best_r1:
            self.best_r1 = score
            self.encoder.save(self.run_dir / "best")
            atomic.write_json(self.run_dir / "best.json", {"step": self.step, **metrics})
        self.world.barrier()
        return metrics

    def run(self, resume: bool = False) -> dict[str, Any]:
        checkpoint = self.run_dir / CHECKPOINT
        atomic.recover_dir(checkpoint)  # a crash may have cut a checkpoint swap in two
        if resume and not (checkpoint / TRAINER_STATE).is_file():
            resume = False  # nothing saved yet: start from the beginning
            (self.run_dir / METRICS).unlink(missing_ok=True)  # lines of the attempt that saved nothing
        if not resume and (self.run_dir / "metrics.jsonl").exists():
            raise GeolocError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build(checkpoint if resume else None)
        if resume:
            self._restore(checkpoint)
        if self.world.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
        train = self.config.train
        deadline = (
            time.monotonic() + train.max_minutes * 60 - self.elapsed if train.max_minutes > 0 else math.inf
        )
        progress = None
        if train.progress and self.world.is_main:
            from tqdm.auto import tqdm

            # Far fewer refreshes when stderr is a log file, not a terminal.
            interval = 0.5 if sys.stderr.isatty() else 30.0
            progress = tqdm(
                total=self.total_steps, initial=self.step, unit="step", desc="training", mininterval=interval
            )
        started, window_pairs, window_start = time.monotonic(), 0, time.monotonic()
        elapsed_at_start = self.elapsed
        stopped_early = False
        while self.step < self.total_steps and self.epoch < train.epochs:
            batches = epoch_batches(self.text_groups, train.batch_size, train.seed, self.epoch)
            while self.batch_in_epoch < len(batches) and self.step < self.total_steps:
                batch = batches[self.batch_in_epoch]
                loss = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                window_pairs += len(batch)
                self.elapsed = elapsed_at_start + time.monotonic() - started
                if self.step % train.log_every == 0 or self.step == 1:
                    rate = window_pairs / max(1e-9, time.monotonic() - window_start)
                    self._log(
                        {
                            "type": "train",
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": loss,
                            "lr": self.scheduler.get_last_lr()[0],
                            "temperature": self.loss_fn.temperature,
                            "pairs_per_s": rate,
                            "processes": self.world.size,
                            "parameter_bytes_per_process": self.parameter_bytes,
                        }
                    )
                    window_pairs, window_start = 0, time.monotonic()
                    if progress is not None:
                        progress.set_postfix(loss=f"{loss:.3f}", pairs_s=f"{rate:.1f}")
                if progress is not None:
                    progress.update(1)
                if train.eval_every and self.step % train.eval_every == 0:
                    self.validate()
                if train.save_every and self.step % train.save_every == 0:
                    self.save_checkpoint()
                if time.monotonic() > deadline:
                    stopped_early = True
                    break
            if self.batch_in_epoch < len(batches):
                break  # stopped inside the epoch (step or time budget): resume continues it
            self.epoch += 1
            self.batch_in_epoch = 0
            if not train.eval_every:
                self.validate()
        if progress is not None:
            progress.close()
        final = self.validate()
        self.save_checkpoint()
        if self.world.is_main:
            self.encoder.save(self.run_dir / "final")
        self.world.barrier()
        return {
            "steps": self.step,
            # None when nothing validated: the run's model is then final/.
            "best_val_r1": self.best_r1 if self.best_r1 >= 0 else None,
            "final_val": final,
            "stopped_early": stopped_early,
        }


def train(
    config: Config, run_dir: str | Path, resume: bool = False, splits: Splits | None = None
) -> dict[str, Any]:
    """Train (or resume) a run; `splits` are the carved data when the caller has them already."""
    trainer = Trainer(config, run_dir, splits=splits)
    try:
        return trainer.run(resume=resume)
    finally:
        if trainer.world.distributed:
            torch.distributed.destroy_process_group()
