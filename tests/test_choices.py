"""Each named choice is stated once, in geoloc/choices.py, and everything else takes it from there."""

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from geoloc import choices
from geoloc.config import Config
from geoloc.errors import ChoiceError, ConfigError

SRC = Path(choices.__file__).parent
# config.py's `num_workers: int | Literal["auto"]`: a number or the word, not a choice among words.
ALLOWED = {"config.py": {"auto"}}


def _choice_literals() -> set[int]:
    return {id(value) for value in vars(choices).values() if typing.get_origin(value) is typing.Literal}


def _literals(annotation: object) -> list[object]:
    if typing.get_origin(annotation) is typing.Literal:
        return [annotation]
    return [lit for member in typing.get_args(annotation) for lit in _literals(member)]


def test_every_choice_in_the_config_is_a_literal_of_choices_py() -> None:
    stated = _choice_literals()
    sections = [Config]
    checked = 0
    while sections:
        section = sections.pop()
        for name, annotation in typing.get_type_hints(section).items():
            if dataclasses.is_dataclass(annotation):
                sections.append(annotation)
                continue
            for literal in _literals(annotation):
                if typing.get_args(literal) == ("auto",):
                    continue  # num_workers: int | "auto"
                assert id(literal) in stated, f"{section.__name__}.{name} states its own choices"
                checked += 1
    assert checked >= 18


def test_no_module_restates_a_choice() -> None:
    """No `Literal[...]` outside choices.py holds an option of a choice. (Literals of other
    words stay where they are used: a function's outcomes, GeoJSON type tags.)"""
    stated = {
        option
        for value in vars(choices).values()
        if typing.get_origin(value) is typing.Literal
        for option in typing.get_args(value)
    }
    restated: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
                words = {str(c.value) for c in ast.walk(node.slice) if isinstance(c, ast.Constant)}
                if words & stated - ALLOWED.get(name, set()):
                    restated.setdefault(name, set()).update(words)
    assert restated == {}


def test_options_and_check_choice() -> None:
    assert choices.options(choices.GeoTextView) == ("all", "satellite", "drone", "ground")
    assert choices.options(choices.OnBadRecord) == ("error", "skip")
    with pytest.raises(TypeError):
        choices.options(str)
    choices.check_choice("mean", choices.Pooling, "pooling")
    with pytest.raises(ChoiceError, match="pooling: 'max' is not one of eos, mean, query") as info:
        choices.check_choice("max", choices.Pooling, "pooling")
    # A library caller's ValueError, and a user's ConfigError, which the CLI prints in one line.
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)
    assert choices.canonical("bf16") == "bfloat16" and choices.canonical(3) == 3


def test_the_config_reference_lists_every_option_of_every_choice() -> None:
    """docs/config.md is written by hand; this keeps it to choices.py's options."""
    import re

    rows: dict[str, str] = {}
    for line in (SRC.parent.parent / "docs" / "config.md").read_text().splitlines():
        if line.startswith("| `"):
            for key in re.findall(r"`([a-z_]+\.[a-z_]+)`", line.split("|")[1]):
                rows[key] = line
    checked = 0
    for section, section_type in typing.get_type_hints(Config).items():
        for name, annotation in typing.get_type_hints(section_type).items():
            for literal in _literals(annotation):
                row = rows.get(f"{section}.{name}", "")
                missing = [option for option in typing.get_args(literal) if f"`{option}`" not in row]
                assert not missing, f"docs/config.md: {section}.{name} does not list {missing}"
                checked += 1
    assert checked >= 18
