"""`geoloc params` (encoder/commands.py)."""

from __future__ import annotations

import json
from pathlib import Path

from geoloc.cli import main


def test_params_counts_the_paper_recipe(capsys) -> None:
    recipe = Path(__file__).parents[2] / "configs" / "paper-internvl3_5-1b.yaml"
    assert main(["params", str(recipe), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["total"] - result["trainable"] == 1_060_897_792
    assert result["trainable"] == 9_027_584
    assert main(["params", "smolvlm-256m", "--set", "tuning.strategy=frozen", "--json"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["total"] == 256_484_928 and frozen["trainable"] == 0
