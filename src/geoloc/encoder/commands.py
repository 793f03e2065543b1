"""`geoloc params`: exact parameter counts of a backbone or a training config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from geoloc.cli_flags import add_overrides


def cmd_params(args: argparse.Namespace) -> int:
    from geoloc.config import load_config
    from geoloc.encoder.counting import count_for_config, format_counts

    # A training config names its own backbone; otherwise MODEL is the backbone and --set
    # chooses the tuning and pooling.
    is_training_config = Path(args.model).suffix in (".yaml", ".yml")
    config = load_config(args.model if is_training_config else None, args.set)
    if not is_training_config:
        config.model.backbone = args.model
    result = count_for_config(config)
    print(json.dumps(result, indent=2) if args.json else format_counts(result))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("params", help="exact total / trainable parameter counts, on the meta device")
    p.add_argument(
        "model",
        help="smolvlm-256m | smolvlm-500m | internvl3_5-1b, an HF id, a config.json, "
        "a tiny preset, or a training config (YAML)",
    )
    add_overrides(p, "e.g. tuning.strategy=dora")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)
