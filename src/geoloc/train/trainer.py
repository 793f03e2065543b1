"""The training run: contrastive tuning of a GeoEncoder, resumable exactly.

A run directory holds:
    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per logged step and per validation
    checkpoints/latest/    encoder + trainer state (optimizer, scheduler, RNG, position), atomic
    best/                  the encoder with the best validation text->image R@1
    final/                 the encoder at the end of training
Model selection uses a validation split carved from the training data, never the test split.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from geoloc import atomic
from geoloc.config import Config, save_config
from geoloc.data.images import load_image
from geoloc.data.manifest import Dataset
from geoloc.encoder.model import EncoderSpec, GeoEncoder, resolve_device
from geoloc.errors import GeolocError
from geoloc.eval.evaluate import evaluate
from geoloc.train.batching import epoch_batches
from geoloc.train.loss import InfoNCE
from geoloc.train.splits import carve_splits  # noqa: F401  (re-exported)

CHECKPOINT = "checkpoints/latest"
TRAINER_STATE = "trainer_state.pt"


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


def _optimizer(params: list[tuple[str, torch.nn.Parameter]], config: Config) -> torch.optim.Optimizer:
    # No weight decay on biases, norms and other 1-d parameters (the released recipe).
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.train.lr)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, config: Config) -> Any:
    warmup = (
        max(1, math.ceil(total_steps * config.train.warmup_ratio)) if config.train.warmup_ratio > 0 else 0
    )
    floor = config.train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(floor, 1.0 - (1.0 - floor) * progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    elif precision in ("bf16", "bfloat16"):
        use_bf16 = True
    elif precision == "float32":
        use_bf16 = False
    else:
        raise GeolocError(f"unknown precision {precision!r}; choose auto, float32 or bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


class Trainer:
    def __init__(self, config: Config, run_dir: str | Path):
        self.config = config
        self.run_dir = Path(run_dir)

    # -- set-up ------------------------------------------------------------------------------
    def _build(self, resume_from: Path | None) -> None:
        config = self.config
        self.device = resolve_device(config.train.device)
        torch.manual_seed(config.train.seed)
        if resume_from is not None:
            self.encoder = GeoEncoder.load(resume_from / "encoder", device=str(self.device), trainable=True)
        else:
            # Every model setting the encoder records in its spec comes from the config.
            spec_fields = {f.name for f in fields(EncoderSpec)} - {"backbone"}
            overrides = {
                f.name: getattr(config.model, f.name) for f in fields(config.model) if f.name in spec_fields
            }
            overrides["tuning"] = config.tuning
            self.encoder = GeoEncoder.load(
                config.model.backbone,
                device=str(self.device),
                dtype=config.model.dtype,
                spec_overrides=overrides,
            )
        if config.train.gradient_checkpointing:
            self.encoder.base_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
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
        self.splits = carve_splits(config)
        texts, image_index = self.splits.train.texts_with_image_index()
        self.texts, self.image_index = texts, image_index
        groups = self.splits.train.groups
        self.text_groups = [groups[i] for i in image_index]
        self.steps_per_epoch = len(
            epoch_batches(self.text_groups, config.train.batch_size, config.train.seed, 0)
        )
        total = self.steps_per_epoch * config.train.epochs
        self.total_steps = min(total, config.train.max_steps) if config.train.max_steps else total
        self.optimizer = _optimizer(params, config)
        self.scheduler = _schedule(self.optimizer, self.total_steps, config)
        self.pixels = PixelCache(self.encoder, self.splits.train)
        self.step, self.epoch, self.batch_in_epoch, self.best_r1 = 0, 0, 0, -1.0
        self.elapsed = 0.0

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_r1": self.best_r1,
            "elapsed": self.elapsed,
        }

    def save_checkpoint(self) -> None:
        with atomic.atomic_dir(self.run_dir / CHECKPOINT) as tmp:
            self.encoder.save(tmp / "encoder")
            torch.save(self._state(), tmp / TRAINER_STATE)

    def _restore(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loss_fn.load_state_dict(state["loss"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best_r1 = state["batch_in_epoch"], state["best_r1"]
        self.elapsed = state["elapsed"]

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self, batch: list[int]) -> float:
        self.encoder.train()
        with _autocast(self.device, self.config.train.precision):
            text_inputs = self.encoder.text_inputs([self.texts[i] for i in batch])
            images = [self.image_index[i] for i in batch]
            image_inputs = self.encoder.image_token_inputs(len(images)) | self.pixels(images)
            loss = self.loss_fn(self.encoder(text_inputs), self.encoder(image_inputs))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def validate(self) -> dict[str, Any]:
        metrics, _ = evaluate(self.encoder, self.splits.val, batch_size=64, show_progress=False)
        record = {"type": "val", "step": self.step, "epoch": self.epoch, **metrics}
        self._log(record)
        r1 = metrics["text_to_image"]["R@1"]
        if r1 > self.best_r1:
            self.best_r1 = r1
            self.encoder.save(self.run_dir / "best")
            atomic.write_json(self.run_dir / "best.json", {"step": self.step, **metrics})
        return metrics

    def run(self, resume: bool = False) -> dict[str, Any]:
        checkpoint = self.run_dir / CHECKPOINT
        if resume and not (checkpoint / TRAINER_STATE).is_file():
            resume = False  # nothing saved yet: start from the beginning
        if not resume and (self.run_dir / "metrics.jsonl").exists():
            raise GeolocError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose --out"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build(checkpoint if resume else None)
        if resume:
            self._restore(checkpoint)
        save_config(self.config, self.run_dir / "config.yaml")
        train = self.config.train
        deadline = (
            time.monotonic() + train.max_minutes * 60 - self.elapsed if train.max_minutes > 0 else math.inf
        )
        progress = None
        if train.progress:
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
        self.encoder.save(self.run_dir / "final")
        return {
            "steps": self.step,
            "best_val_r1": self.best_r1,
            "final_val": final,
            "stopped_early": stopped_early,
        }


def train(config: Config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    return Trainer(config, run_dir).run(resume=resume)
