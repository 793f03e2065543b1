"""The training run: contrastive tuning of a MllmEncoder, resumable exactly.

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

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from geoloc import atomic, faults
from geoloc.choices import NoDecayRule, TrainPrecision, WarmupRule
from geoloc.config import Config, save_config
from geoloc.data.pipeline import (
    PairBatch,
    PairCollator,
    PairDataset,
    available_cores,
    batches_of,
    checked,
    make_loader,
    resolve_workers,
)
from geoloc.encoder.base import Encoder
from geoloc.encoder.card import record_validation
from geoloc.encoder.devices import resolve_device
from geoloc.encoder.inputs import bucket_lengths
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.saved import SAVED_BACKBONE
from geoloc.encoder.tile_features import TileFeatureStore, vision_is_adapted
from geoloc.errors import ConfigError, GeolocError
from geoloc.eval.evaluate import evaluate
from geoloc.eval.results import primary_value
from geoloc.train.batching import Batches, BatchGuard, EpochBatchSampler, epoch_order, form_batches
from geoloc.train.loss import InfoNCE
from geoloc.train.mining import Partners, confusable_tiles, nearest_tiles, tile_positions
from geoloc.train.sharding import check_shardable, local_parameter_bytes, shard_language_model
from geoloc.train.splits import Splits, carve_splits
from geoloc.train.state import TRAINER_STATE, TrainState, rng_state, set_rng_state
from geoloc.train.step import ContrastiveStep, PairEncoder
from geoloc.world import World, join_world

CHECKPOINT = "checkpoints/latest"
METRICS = "metrics.jsonl"
# `geoloc train` warns (once) when steps wait longer than this share of their time for data.
DATA_WAIT_WARNING = 0.10
# nearby / mined: the tiles ranked for each item, per partner it may pull (some are taken or
# guarded by the time it joins a batch).
CANDIDATES = 4

__all__ = ["CHECKPOINT", "TRAINER_STATE", "Trainer", "TrainState", "rng_state", "set_rng_state", "train"]


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _truncate(path: Path, size: int | None) -> None:
    """Cut `path` back to `size` bytes (None: a checkpoint from before sizes were recorded)."""
    if size is not None and _file_size(path) > size:
        with open(path, "r+b") as f:
            f.truncate(size)


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
    return precision == "bfloat16"


def _autocast(device: torch.device, precision: TrainPrecision) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_uses_bf16(device, precision))


@dataclass
class _RunClock:
    """The run's time, counted across attempts: a resumed run's TrainState.elapsed_s goes on from
    its checkpoint's, and train.max_minutes is a budget for all attempts together."""

    elapsed_at_start: float  # TrainState.elapsed_s when this attempt started training
    deadline: float  # the time.monotonic() at which the budget runs out; inf without one
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.elapsed_at_start + time.monotonic() - self.started

    def past_deadline(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass
class _LogWindow:
    """The steps since the last train log line: their pairs, and their time spent waiting for
    input batches and computing. A log line reports their rate, and the data-wait warning their
    shares, so a slow start does not colour the whole run's numbers."""

    pairs: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0
    start: float = field(default_factory=time.monotonic)

    def add(self, pairs: int, wait_s: float, compute_s: float) -> None:
        self.pairs += pairs
        self.wait_s += wait_s
        self.compute_s += compute_s

    def pairs_per_s(self) -> float:
        return self.pairs / max(1e-9, time.monotonic() - self.start)

    def reset(self) -> None:
        self.pairs, self.start = 0, time.monotonic()
        self.wait_s = self.compute_s = 0.0


class Trainer:
    """A training run. `run()` builds it, trains and saves; `build()` alone sets it up (tests and
    benchmarks take single steps with `train_step`)."""

    def __init__(
        self, config: Config, run_dir: str | Path, world: World | None = None, splits: Splits | None = None
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.world = world or join_world()
        self._given_splits = splits  # already carved (and checked) by the caller, else carved here
        self.state = TrainState()
        self._warned_data_wait = False

    # -- set-up ------------------------------------------------------------------------------
    def build(self, resume_from: Path | None = None) -> None:
        """Everything a run needs, in order: device, encoder, tile features, loss and step, data,
        optimizer. `resume_from`: a checkpoint folder whose encoder is loaded (its TrainState and
        optimizer come back with `restore`)."""
        self._choose_device()
        self._load_encoder(resume_from)
        self._attach_tile_features()
        params = self._build_step()
        self._build_data()
        self.optimizer = _optimizer(params, self.config)
        self.scheduler = _schedule(self.optimizer, self.total_steps, self.config)
        self.state = TrainState()

    def _choose_device(self) -> None:
        self.device = resolve_device(self.config.train.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(self.config.train.seed)

    def _load_encoder(self, resume_from: Path | None) -> None:
        config = self.config
        self.sharded = config.train.sharding == "fsdp" and self.world.distributed
        # Sharded: built on the CPU and sharded before it moves, so it is never whole on a GPU.
        load_device = "cpu" if self.sharded else str(self.device)
        if resume_from is not None:
            self.encoder: Encoder = load_encoder(resume_from / "encoder", device=load_device, trainable=True)
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

    def _attach_tile_features(self) -> None:
        self.feature_store = self._feature_store()
        if self.feature_store is not None and self.feature_store.precision == "float32":
            # Validation encodes in float32 too, so the encoder reads the same stored features.
            self.encoder = self.encoder.rebuilt(tile_features=self.feature_store)

    def _build_step(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The loss and the contrastive step (DDP or FSDP around the encoder); returns the
        trainable parameters."""
        config = self.config
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
        self.parameter_bytes = local_parameter_bytes(self.encoder)  # after sharding: this process's share
        if config.train.compile:
            self._compile()
        self.contrastive_step = ContrastiveStep(
            self.step_model,
            self.loss_fn,
            lambda: _autocast(self.device, config.train.precision),
            self.device,
            self.world,
            chunk=config.train.grad_cache_chunk,
            averaged=averaged,
        )
        return params

    def _compile(self) -> None:
        """torch.compile on the encoder's forward; texts padded to power-of-two bucket lengths
        so that it meets (and compiles for) a bounded number of shapes."""
        builder = self.encoder.text_builder
        longest = len(builder.prefix) + builder.limit + len(builder.suffix)
        builder.length_buckets = bucket_lengths(longest)
        # Compiled code is cached per code object, not per model: a run compiles afresh, so
        # shapes another model's run met (its image size) are never taken for dynamic ones.
        torch.compiler.reset()
        self.encoder.compile(backend=self.config.train.compile_backend)

    def _build_data(self) -> None:
        """The training pairs, their batch order, and the DataLoader that prepares them."""
        config = self.config
        self.splits = self._given_splits or carve_splits(config)
        train_set = self.splits.train
        self.texts, self.image_index = train_set.texts_with_image_index()
        self.text_groups = [train_set.groups[i] for i in self.image_index]
        self._build_batching()
        self.sampler = EpochBatchSampler(local=self._local_rows)
        # nearby and mined epochs may differ in length from a random one (an item that fits no
        # batch waits for the next); the schedule counts a random epoch's batches.
        self.steps_per_epoch = len(
            form_batches(
                epoch_order(len(self.texts), config.train.seed, 0), config.train.batch_size, self.guard
            )
        )
        total = self.steps_per_epoch * config.train.epochs
        self.total_steps = min(total, config.train.max_steps) if config.train.max_steps else total
        try:
            self.num_workers = resolve_workers(
                config.train.num_workers, self._processes_per_machine(), self.device
            )
        except ValueError as error:
            raise ConfigError(f"train.num_workers: {error}") from error
        # Tiles whose features come from the store need no pixels: workers then only tokenize.
        processor = None if self.feature_store is not None else self.encoder.tile_processor
        records = train_set.records
        self.pairs = PairDataset(
            self.texts, self.image_index, [r.image for r in records], [r.key for r in records], processor
        )
        self.collate = PairCollator(self.encoder.text_builder, processor)
        self.loader = make_loader(
            self.pairs,
            self.collate,
            self.num_workers,
            self.device,
            seed=config.train.seed,
            batch_sampler=self.sampler,
        )

    def _build_batching(self) -> None:
        """What `train.batching` needs before the first epoch: the guard that says which texts
        may share a batch, and under nearby each tile's nearest tiles."""
        train, records = self.config.train, self.splits.train.records
        positions = None
        if train.batching == "nearby" or train.negative_min_km > 0:
            why = "train.batching: nearby" if train.batching == "nearby" else "train.negative_min_km"
            positions = tile_positions(records, why)
        self.text_positions = positions[self.image_index] if positions is not None else None
        self.guard = BatchGuard(self.text_groups, self.text_positions, train.negative_min_km)
        if train.batching == "nearby":
            assert positions is not None
            self.nearest = nearest_tiles(
                positions, self.splits.train.groups, CANDIDATES * train.batch_neighbours
            )

    def plan_epoch(self) -> Batches:
        """The batches of this epoch (`train.batching`); a mined plan is kept in the TrainState.

        Under mined, the first `train.mining_warmup` of the run's steps take random batches: a
        model that has learnt nothing yet confuses everything with everything."""
        state, train = self.state, self.config.train
        if train.batching != "mined" or state.step < self._mining_start():
            return self._ordered_batches(state.epoch)
        if state.plan_epoch == state.epoch and not self._mining_due():
            return state.batches  # planned before the checkpoint this run resumed from
        # The batches this epoch has consumed stay as they were: mined, or random before mining.
        planned = state.batches if state.plan_epoch == state.epoch else self._ordered_batches(state.epoch)
        return self._mine(consumed=planned[: state.batch_in_epoch])

    def _ordered_batches(self, epoch: int) -> Batches:
        """Random batches (nearby: around spatial neighbours): a pure function of seed and epoch."""
        train = self.config.train
        order = epoch_order(len(self.texts), train.seed, epoch)
        if train.batching != "nearby":
            return form_batches(order, train.batch_size, self.guard)
        partners = Partners(self.nearest, self.image_index, self.image_index, order)
        return form_batches(order, train.batch_size, self.guard, partners, train.batch_neighbours)

    def _mining_start(self) -> int:
        return int(self.total_steps * self.config.train.mining_warmup)

    def _mining_due(self) -> bool:
        """Whether the batches must be mined (again) before the next step."""
        state, train = self.state, self.config.train
        if train.batching != "mined" or state.step < self._mining_start():
            return False
        if state.plan_epoch < 0 or state.mined_step < self._mining_start():
            return True  # never mined since the warm-up ended
        return train.mine_every > 0 and state.step - state.mined_step >= train.mine_every

    def _mine(self, consumed: Batches) -> Batches:
        """Embed the training texts and tiles with the current model and form the rest of the
        epoch's batches around the pairs it confuses; every process gets the first one's."""
        state, train = self.state, self.config.train
        started = time.perf_counter()
        batches: Batches | None = None
        if self.world.is_main or self.sharded:  # a sharded model encodes only with all in step
            text_emb, tile_emb = self._embed_training_set()
            placed = {i for batch in consumed for i in batch}
            order = [i for i in epoch_order(len(self.texts), train.seed, state.epoch) if i not in placed]
            guard = BatchGuard(
                self.text_groups,
                self.text_positions,
                train.negative_min_km,
                text_emb,
                tile_emb[self.image_index],
                train.false_negative_margin,
            )
            ranked = confusable_tiles(
                text_emb,
                tile_emb,
                self.text_groups,
                self.splits.train.groups,
                CANDIDATES * train.batch_neighbours,
            )
            partners = Partners(ranked, range(len(self.texts)), self.image_index, order)
            batches = consumed + form_batches(
                order, train.batch_size, guard, partners, train.batch_neighbours
            )
        batches = self.world.gather_objects(batches)[0]
        state.batches, state.plan_epoch, state.mined_step = batches, state.epoch, state.step
        seconds = time.perf_counter() - started
        self._log(
            {
                "type": "mining",
                "step": state.step,
                "epoch": state.epoch,
                "seconds": seconds,
                "texts": len(self.texts),
                "tiles": len(self.splits.train.records),
            }
        )
        return batches

    def _embed_training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors of the training texts and tiles, with the model as it stands. Tiles come
        from the feature store when the vision side is frozen, through the evaluation pipeline."""
        miner = self.encoder
        if self.feature_store is not None and self.feature_store.precision != "float32":
            miner = self.encoder.rebuilt(tile_features=self.feature_store)  # validation's stays float32
        images = [r.image for r in self.splits.train.records]
        with torch.no_grad():
            text_emb = miner.encode_text(self.texts, batch_size=64, show_progress=False)
            tile_emb = miner.encode_images(
                images, batch_size=64, show_progress=False, num_workers=self.num_workers
            )
        return text_emb, tile_emb

    def _processes_per_machine(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if self.world.distributed else 1

    def _share(self, batch: list[int]) -> tuple[list[int], int, int]:
        """(rows this process encodes, offset of its first row, real rows) of a global batch.
        Under FSDP every process runs the same passes: equal shares, padded with filler rows."""
        if self.sharded:
            return self.world.padded_slice_of(batch)
        local, offset = self.world.slice_of(batch)
        return local, offset, len(local)

    def _local_rows(self, batch: list[int]) -> list[int]:
        return self._share(batch)[0]

    def _feature_store(self) -> TileFeatureStore | None:
        """Tile features from disk when the vision side is frozen (train.tile_features)."""
        train = self.config.train
        if not self.encoder.has_tile_features:  # a dual encoder has no LLM to feed features to
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
        return TileFeatureStore(
            self.encoder,
            train.tile_feature_dir or None,
            autocast=lambda: _autocast(self.device, train.precision),
            precision="bfloat16" if bf16 else "float32",
            num_workers=train.num_workers,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        # Every process holds the same weights and optimizer state: the first one writes. The
        # random state differs per process (each draws dropout on its own GPU): all are kept.
        self.state.rng_per_process = self.world.gather_objects(rng_state())
        self.state.metrics_bytes = _file_size(self.run_dir / METRICS)
        if self.world.is_main:
            with atomic.atomic_dir(self.run_dir / CHECKPOINT) as tmp:
                self.encoder.save(tmp / "encoder")
                faults.point("checkpoint.write")
                saved = self.state.to_dict() | {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "loss": self.loss_fn.state_dict(),
                }
                torch.save(saved, tmp / TRAINER_STATE)
        self.world.barrier()

    def restore(self, checkpoint: Path) -> None:
        """Continue from a checkpoint: optimizer, scheduler, loss and the whole TrainState."""
        saved = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.loss_fn.load_state_dict(saved["loss"])
        self.state = TrainState.from_dict(saved)
        per_process = self.state.rng_per_process
        if per_process:
            set_rng_state(per_process[min(self.world.rank, len(per_process) - 1)])
        if self.world.is_main:  # what was logged after this checkpoint is logged again from here
            _truncate(self.run_dir / METRICS, saved.get("metrics_bytes"))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)  # a built trainer may log before it runs
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def prepare(self, batch: list[int]) -> PairBatch:
        """This process's inputs of a global batch, built here rather than in a worker."""
        return checked(self.collate([self.pairs[i] for i in self._local_rows(batch)]))

    def train_step(self, batch: list[int], inputs: PairBatch | None = None) -> float:
        """One optimizer step on a global batch; this process encodes its share of it, whose
        inputs the DataLoader prepared (`inputs`), or are prepared here."""
        self.encoder.train()
        if inputs is None:
            inputs = self.prepare(batch)
        local, offset, real = self._share(batch)
        tokens = self.encoder.image_token_inputs(len(local))
        if inputs.pixels is None:  # the tiles' features come from the store
            records = [self.splits.train.records[self.image_index[i]] for i in local]
            # Pixels are None only when a feature store left them out: the store is there.
            features = self.feature_store.features([r.image for r in records], [r.key for r in records])  # ty: ignore[missing-union-attribute]
            image_inputs = tokens | {"image_features": features}
        else:
            image_inputs = tokens | inputs.pixels
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.contrastive_step(inputs.text, image_inputs, offset, len(batch), real)
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
        record = {"type": "val", "step": self.state.step, "epoch": self.state.epoch, **metrics}
        self._log(record)
        faults.point("validate")
        score = primary_value(metrics)  # the model is selected by the results' primary metric
        if score > self.state.best_primary_metric:
            self.state.best_primary_metric = score
            self.encoder.save(self.run_dir / "best")
            atomic.write_json(self.run_dir / "best.json", {"step": self.state.step, **metrics})
            record_validation(self.run_dir / "best", metrics, self.state.step)  # onto its model card
        self.world.barrier()
        return metrics

    def _epoch_batches(self) -> Any:
        """(global batch, prepared inputs, seconds waited for them) for the rest of this epoch,
        prepared by the DataLoader's workers ahead of the step that takes them."""
        self.sampler.use(self.plan_epoch(), start=self.state.batch_in_epoch)
        batches = self.sampler.remaining()
        prepared = batches_of(self.loader)
        try:
            for batch in batches:
                waited = time.perf_counter()
                inputs = next(prepared)
                yield batch, inputs, time.perf_counter() - waited
        finally:
            prepared.close()  # the epoch's workers stop here, however the epoch ends

    def _warn_if_waiting(self, wait_s: float, step_s: float) -> None:
        share = wait_s / max(1e-9, wait_s + step_s)
        if share > DATA_WAIT_WARNING and not self._warned_data_wait and self.world.is_main:
            self._warned_data_wait = True
            warnings.warn(
                f"training steps waited {share:.0%} of their time for input batches: raise "
                f"train.num_workers (now {self.num_workers}; this process may use "
                f"{available_cores()} cores) or put the tiles on faster storage",
                stacklevel=2,
            )

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Build, train until the step, epoch or time budget runs out, validate and save.

        With `resume`, the run continues from its last checkpoint exactly: the same batches and
        the same random draws as if it had never stopped. A run that saved nothing yet starts over.
        """
        checkpoint = self.run_dir / CHECKPOINT
        resume = self._claim_run_dir(checkpoint, resume)
        self.build(checkpoint if resume else None)
        if resume:
            self.restore(checkpoint)
        if self.world.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
        deadline = self._deadline()
        progress = self._progress_bar()
        stopped_early = self._train_epochs(_RunClock(self.state.elapsed_s, deadline), progress)
        if progress is not None:
            progress.close()
        return self._finish(stopped_early)

    def _claim_run_dir(self, checkpoint: Path, resume: bool) -> bool:
        """Make the run folder ready; whether there is a checkpoint to resume from.

        A new run refuses a folder that already holds one, so two runs' logs never mix.
        """
        atomic.recover_dir(checkpoint)  # a crash may have cut a checkpoint swap in two
        if resume and not (checkpoint / TRAINER_STATE).is_file():
            resume = False  # nothing saved yet: start from the beginning
            (self.run_dir / METRICS).unlink(missing_ok=True)  # lines of the attempt that saved nothing
        if not resume and (self.run_dir / METRICS).exists():
            raise GeolocError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return resume

    def _deadline(self) -> float:
        """When train.max_minutes runs out (time.monotonic()), less the minutes earlier attempts
        of this run used; inf without a limit."""
        train = self.config.train
        if train.max_minutes > 0:
            return time.monotonic() + train.max_minutes * 60 - self.state.elapsed_s
        return math.inf

    def _progress_bar(self) -> Any:
        """A tqdm bar over the steps on the main process, if train.progress asks for one; else None."""
        if not (self.config.train.progress and self.world.is_main):
            return None
        from tqdm.auto import tqdm

        # Far fewer refreshes when stderr is a log file, not a terminal.
        interval = 0.5 if sys.stderr.isatty() else 30.0
        return tqdm(
            total=self.total_steps,
            initial=self.state.step,
            unit="step",
            desc="training",
            mininterval=interval,
        )

    def _train_epochs(self, clock: _RunClock, progress: Any) -> bool:
        """Train epoch after epoch until a budget runs out; True if the time budget stopped it."""
        state = self.state
        window = _LogWindow()
        stopped_early = False
        while state.step < self.total_steps and state.epoch < self.config.train.epochs:
            ended = self._train_epoch(clock, window, progress)
            if ended == "mining":
                continue  # the rest of this epoch is formed again, around the new hard negatives
            if ended == "deadline":
                stopped_early = True
            if state.batch_in_epoch < len(self.sampler.batches):  # epochs differ in length
                break  # stopped inside the epoch (step or time budget): resume continues it
            self._end_epoch()
            if stopped_early:
                break  # the time ran out on the epoch's last batch: the epoch is closed, stop here
        return stopped_early

    def _train_epoch(
        self, clock: _RunClock, window: _LogWindow, progress: Any
    ) -> Literal["ended", "deadline", "mining"]:
        """Train on the rest of this epoch's batches. Why it stopped: the batches (or the step
        budget) ended, the time budget ran out, or hard negatives are due to be mined again."""
        state = self.state
        with contextlib.closing(self._epoch_batches()) as epoch_batches:
            for batch, inputs, wait_s in epoch_batches:
                if state.step >= self.total_steps:
                    break
                computing = time.perf_counter()
                loss = self.train_step(batch, inputs)
                step_s = time.perf_counter() - computing
                state.step += 1
                state.batch_in_epoch += 1
                window.add(len(batch), wait_s, step_s)
                state.elapsed_s = clock.elapsed()
                self._report_step(loss, wait_s, step_s, window, progress)
                self._validate_and_save_when_due()
                if self._out_of_time(clock):
                    return "deadline"
                if self._mining_due() and state.batch_in_epoch < len(self.sampler.batches):
                    return "mining"
        return "ended"

    def _out_of_time(self, clock: _RunClock) -> bool:
        """Whether train.max_minutes ran out, agreed by every process, so that all stop after the
        same step: one that stopped alone would leave the others waiting in the next step."""
        return clock.deadline != math.inf and self.world.any_of(clock.past_deadline())

    def _report_step(
        self, loss: float, wait_s: float, step_s: float, window: _LogWindow, progress: Any
    ) -> None:
        """The step on the progress bar, and every train.log_every steps (and the first) a log line."""
        step = self.state.step
        if step % self.config.train.log_every == 0 or step == 1:
            rate = window.pairs_per_s()
            self._log(
                {
                    "type": "train",
                    "step": step,
                    "epoch": self.state.epoch,
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "temperature": self.loss_fn.temperature,
                    "pairs_per_s": rate,
                    "data_wait_s": wait_s,  # this step's wait for its batch
                    "step_s": step_s,  # this step's computing time
                    "processes": self.world.size,
                    "parameter_bytes_per_process": self.parameter_bytes,
                }
            )
            if step > 1:  # the first batch waits for the workers to start
                self._warn_if_waiting(window.wait_s, window.compute_s)
            window.reset()
            if progress is not None:
                progress.set_postfix(loss=f"{loss:.3f}", pairs_s=f"{rate:.1f}")
        if progress is not None:
            progress.update(1)

    def _validate_and_save_when_due(self) -> None:
        """Validate every train.eval_every steps and checkpoint every train.save_every (0: never)."""
        train, step = self.config.train, self.state.step
        if train.eval_every and step % train.eval_every == 0:
            self.validate()
        if train.save_every and step % train.save_every == 0:
            self.save_checkpoint()

    def _end_epoch(self) -> None:
        """Move on to the next epoch; without train.eval_every, validate once an epoch."""
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        if not self.config.train.eval_every:
            self.validate()

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        """Validate and save the last model (final/, and the checkpoint); the run's summary."""
        final = self.validate()
        self.save_checkpoint()
        if self.world.is_main:
            self.encoder.save(self.run_dir / "final")
            record_validation(self.run_dir / "final", final, self.state.step)
        self.world.barrier()
        best = self.state.best_primary_metric
        return {
            "steps": self.state.step,
            # None when nothing validated: the run's model is then final/.
            "best_val_r1": best if best >= 0 else None,
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
