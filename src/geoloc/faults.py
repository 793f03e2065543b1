"""Fault injection for the crash tests: make this process SIGKILL itself at a named point.

    GEOLOC_FAULT="checkpoint.write:2" geoloc train ...   # dies the 2nd time it reaches that point
    GEOLOC_FAULT="train.step:3,validate:1"              # several points: the first one reached kills

Code marks the moments worth dying at with `faults.point("name")`. Without GEOLOC_FAULT a point
costs one dictionary look-up; the variable is meant for tests only (tests/reliability/).
A real SIGKILL (not an exception) is used so that no `finally:` or `with` block gets to clean up:
exactly what a power cut or the OOM killer does.
"""

from __future__ import annotations

import os
import signal

ENV = "GEOLOC_FAULT"
_passes: dict[str, int] = {}
_plan_cache: tuple[str, dict[str, int]] = ("", {})


def _plan() -> dict[str, int]:
    """{point: n} from GEOLOC_FAULT, parsed again only when the variable changes."""
    global _plan_cache
    text = os.environ.get(ENV, "")
    if text != _plan_cache[0]:
        plan: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, count = item.rpartition(":")
            if not name or not count.isdigit() or int(count) < 1:
                raise ValueError(f"{ENV}: {item!r} is not point:n with n >= 1")
            plan[name] = int(count)
        _plan_cache = (text, plan)
        _passes.clear()
    return _plan_cache[1]


def point(name: str) -> None:
    """Count a pass through `name`; SIGKILL this process on the pass GEOLOC_FAULT names."""
    if not os.environ.get(ENV):
        return
    plan = _plan()
    if name not in plan:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == plan[name]:
        os.kill(os.getpid(), signal.SIGKILL)
