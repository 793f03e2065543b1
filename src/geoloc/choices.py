"""Every named choice a user makes, each stated once.

A config field, a CLI flag's `choices`, a library function's signature and its runtime check
all take their values from the `Literal` here: `options(Pooling)` gives the tuple to check
against or offer. The module imports nothing heavy, so the CLI's parser (which must start in a
blink: tests/test_cli_startup.py) and the light data readers can use it as the config does.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from geoloc.errors import ChoiceError

# --- the model --------------------------------------------------------------------------------
# The weights' dtype (config model.dtype, --dtype) and the training's autocast precision
# (train.precision) share one spelling of bfloat16: torch's and Hugging Face's.
WeightsDtype = Literal["float32", "bfloat16"]
TrainPrecision = Literal["auto", "float32", "bfloat16"]
# A served model's precision (encoder/serving.py): bfloat16 weights, or int8 dynamic quantisation.
ServingPrecision = Literal["float32", "bfloat16", "int8"]
# The spelling older configs and run folders used for bfloat16; read as bfloat16 (see `canonical`).
OLDER_SPELLINGS = {"bf16": "bfloat16"}

Pooling = Literal["eos", "mean", "query"]
PaddingSide = Literal["left", "right"]
# How a tile becomes pixels (encoder/inputs.py): one resize, or the released code's two steps.
Preprocessing = Literal["one-resize", "released"]
TuningStrategy = Literal["frozen", "lora", "dora", "full"]
# peft's `init_lora_weights` values that need nothing beyond the weights ("default" is peft's
# True: A random, B zero, so an adapter starts as the identity). eva, corda and loftq need data or
# a config of their own and are not offered.
LoraInit = Literal["default", "gaussian", "pissa", "olora", "orthogonal"]

# --- training ---------------------------------------------------------------------------------
LossDirection = Literal["text_to_image", "symmetric"]
NoDecayRule = Literal["ndim", "names"]
WarmupRule = Literal["ceil", "released"]
TileFeatures = Literal["auto", "cache", "compute"]
Sharding = Literal["ddp", "fsdp"]
CompileBackend = Literal["inductor", "aot_eager"]
Batching = Literal["random", "nearby", "mined"]

# --- data -------------------------------------------------------------------------------------
BenchmarkName = Literal["manifest", "geotext1652", "cvgtext"]
CvgTextVersion = Literal["mixed", "panorama", "photos"]
CvgTextTarget = Literal["satellite", "osm"]
CvgTextSplit = Literal["train", "test"]
# A GeoText-1652 image's camera, and the images a run keeps: one camera's, or all.
GeoTextCamera = Literal["satellite", "drone", "ground"]
GeoTextView = Literal["all", GeoTextCamera]
GeoTextSplit = Literal["train", "test", "test_24G"]
OnBadRecord = Literal["error", "skip"]
CityStyleName = Literal["demo", "holdout"]  # `geoloc synth --style`

# --- evaluation -------------------------------------------------------------------------------
RetrievalDirection = Literal["text_to_image", "image_to_text"]
# How GeoText-1652 is scored (docs/benchmarks.md): its benchmark protocol, the official code's
# quirks, or the paper's own script.
GeoTextProtocol = Literal["benchmark", "official-quirks", "paper"]


def options(choice: Any) -> tuple[str, ...]:
    """The values of a choice `Literal`, in their stated order."""
    if typing.get_origin(choice) is not Literal:
        raise TypeError(f"{choice!r} is not a Literal")
    return typing.get_args(choice)


def canonical(value: Any) -> Any:
    """`value` in today's spelling: an older spelling (`bf16`) becomes the one in use (`bfloat16`)."""
    return OLDER_SPELLINGS.get(value, value) if isinstance(value, str) else value


def check_choice(value: object, choice: Any, what: str) -> None:
    """Refuse a value outside `choice`, naming `what` and the valid values (for library calls
    that bypass the config, whose reader checks every choice already)."""
    valid = options(choice)
    if value not in valid:
        raise ChoiceError(f"{what}: {value!r} is not one of {', '.join(valid)}")
