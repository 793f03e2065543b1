"""InfoNCE over in-batch negatives.

Row i of the text batch and row i of the image batch are a positive pair; every other image in
the batch is a negative for text i. The paper trains text -> image only; `symmetric` adds the
image -> text term. The temperature is fixed (the paper's best, 0.03) or learned as a log scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DIRECTIONS = ("text_to_image", "symmetric")


class InfoNCE(nn.Module):
    def __init__(self, temperature: float = 0.03, learnable: bool = False, direction: str = "text_to_image"):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown loss direction {direction!r}; choose one of: {', '.join(DIRECTIONS)}")
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

    def forward(self, text_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        # Clamp as CLIP does: a scale past 100 makes the softmax unstable.
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * text_emb.float() @ image_emb.float().T
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = nn.functional.cross_entropy(logits, labels)
        if self.direction == "symmetric":
            loss = (loss + nn.functional.cross_entropy(logits.T, labels)) / 2
        return loss
