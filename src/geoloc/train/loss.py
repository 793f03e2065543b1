"""InfoNCE over in-batch negatives.

Row i of the text batch and row i of the image batch are a positive pair; every other image in
the batch is a negative for text i. The paper trains text -> image only; `symmetric` adds the
image -> text term. The temperature is fixed or learned as a log scale. The released recipe fixes
it at 0.02 (the released train.py's default at HEAD, which overrides its YAML); the paper's table
of temperatures is not public, so 0.03 and others are values to sweep (configs/sweeps/contrastive.yaml).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geoloc.choices import LossDirection, check_choice


class InfoNCE(nn.Module):
    def __init__(
        self, temperature: float = 0.02, learnable: bool = False, direction: LossDirection = "text_to_image"
    ):
        super().__init__()
        check_choice(direction, LossDirection, "loss.direction")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.direction = direction
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale))

    def forward(
        self,
        text_emb: torch.Tensor,
        image_emb: torch.Tensor,
        text_all: torch.Tensor | None = None,
        image_all: torch.Tensor | None = None,
        offset: int = 0,
        total_rows: int | None = None,
    ) -> torch.Tensor:
        """Mean loss over a batch of pairs: text i's positive is image i.

        In a batch shared by several processes, `text_emb` / `image_emb` are this process's rows,
        `text_all` / `image_all` the whole batch's (gathered with gradients), `offset` the index
        of this process's first row in it, and `total_rows` the whole batch's size: the result is
        this process's share of the whole batch's loss (the shares sum to it).
        """
        text_all = text_emb if text_all is None else text_all
        image_all = image_emb if image_all is None else image_all
        total_rows = text_emb.shape[0] if total_rows is None else total_rows
        # Clamp as CLIP does: a scale past 100 makes the softmax unstable.
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        labels = offset + torch.arange(text_emb.shape[0], device=text_emb.device)

        def rows_loss(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
            logits = scale * rows.float() @ columns.float().T
            return nn.functional.cross_entropy(logits, labels, reduction="sum") / total_rows

        loss = rows_loss(text_emb, image_all)
        if self.direction == "symmetric":
            loss = (loss + rows_loss(image_emb, text_all)) / 2
        return loss
