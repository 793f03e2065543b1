import math

import pytest
import torch

from geoloc.train.loss import InfoNCE


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_info_nce_equals_hand_computed_value() -> None:
    text = _unit([[1.0, 0.0], [0.0, 1.0]])
    image = _unit([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # Row 0: logits [1, 1/sqrt2] / t, label 0; row 1: [0, 1/sqrt2] / t, label 1.
    s = 1 / math.sqrt(2)
    row0 = -(1 / t) + math.log(math.exp(1 / t) + math.exp(s / t))
    row1 = -(s / t) + math.log(math.exp(0) + math.exp(s / t))
    expected = (row0 + row1) / 2
    loss = InfoNCE(temperature=t)(text, image)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_adds_image_to_text_term() -> None:
    text = _unit([[1.0, 0.0], [0.0, 1.0]])
    image = _unit([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    s = 1 / math.sqrt(2)
    # Columns as queries: image 0 scores [1, 0], label 0; image 1 scores [s, s], label 1.
    col0 = -(1 / t) + math.log(math.exp(1 / t) + math.exp(0))
    col1 = -(s / t) + math.log(2 * math.exp(s / t))
    t2i = InfoNCE(temperature=t)(text, image).item()
    both = InfoNCE(temperature=t, direction="symmetric")(text, image).item()
    assert both == pytest.approx((t2i + (col0 + col1) / 2) / 2, rel=1e-6)


def test_duplicated_batch_raises_loss_by_log2() -> None:
    # A positive duplicated as a negative (a false negative) splits the probability in two.
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss = InfoNCE(temperature=0.01)
    perfect = loss(text, text).item()
    # The columns a broken two-rank gather would give: the local batch twice.
    doubled = loss(text, torch.cat([text, text])).item()
    assert doubled == pytest.approx(perfect + math.log(2), abs=1e-4)


def test_learnable_temperature_is_a_parameter_and_fixed_is_not() -> None:
    learnable = InfoNCE(temperature=0.07, learnable=True)
    fixed = InfoNCE(temperature=0.03)
    assert [n for n, _ in learnable.named_parameters()] == ["log_scale"]
    assert list(fixed.parameters()) == []
    assert fixed.temperature == pytest.approx(0.03)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    learnable(text, text.flip(0)).backward()
    assert learnable.log_scale.grad is not None and learnable.log_scale.grad.abs() > 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="text_to_image"):
        InfoNCE(direction="sideways")
    with pytest.raises(ValueError, match="positive"):
        InfoNCE(temperature=0)
