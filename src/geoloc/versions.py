"""The library releases geoloc is tested with, and a warning when others are installed.

geoloc leans on transformers and peft for model loading, image features and adapters, and their
behaviour changes between releases (transformers 5.24 changed what `get_image_features` returns).
`make test` runs the suite on the pinned releases (constraints.txt, the floor of each range) and
again on the newest ones; TESTED holds both ends as last run. Outside them geoloc still runs,
but says once which versions it was not tested with.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

# Library -> (oldest tested, newest tested). The oldest is constraints.txt's pin and pyproject's
# floor; the newest is what the compatibility pass of `make test` installed.
TESTED: dict[str, tuple[str, str]] = {
    "transformers": ("5.18.0", "5.24.0"),
    "peft": ("0.21.0", "0.21.2"),
    "accelerate": ("1.15.0", "1.15.0"),
    "tokenizers": ("0.23.3", "0.23.3"),
}

_warned = False


class UntestedVersionWarning(UserWarning):
    """A library release outside the range geoloc was tested with is installed."""


def untested_versions(installed: dict[str, str] | None = None) -> list[str]:
    """'name version (tested: low to high)' for each installed library outside its tested range."""
    if installed is None:
        installed = {}
        for name in TESTED:
            try:
                installed[name] = version(name)
            except PackageNotFoundError:
                continue
    outside = []
    for name, (low, high) in TESTED.items():
        if name in installed and not Version(low) <= Version(installed[name]) <= Version(high):
            outside.append(f"{name} {installed[name]} (tested: {low} to {high})")
    return outside


def warn_if_untested() -> None:
    """Warn once per process when a library release outside the tested range is installed."""
    global _warned
    if _warned:
        return
    _warned = True
    outside = untested_versions()
    if outside:
        warnings.warn(
            "geoloc has not been tested with " + "; ".join(outside) + ". It may work; if it fails, "
            "install releases inside those ranges (the README's 'Tested releases' says how)",
            UntestedVersionWarning,
            stacklevel=3,
        )
