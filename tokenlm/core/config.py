"""Stage configuration: frozen dataclasses filled from a recipe YAML and command-line overrides.

Each stage's dataclass lives next to the code that uses it (``FeatureConfig`` in features.py,
``TokenizerConfig`` in tokenizer.py, ...), the way nanoGPT keeps ``GPTConfig`` beside the
model. This module holds only the machinery: strict parsing (an unknown key is an error that
names the known ones), YAML loading and layering of overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from tokenlm.core.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    """Read a recipe file; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def build(cls: type[T], *layers: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from defaults overridden by each mapping in ``layers`` in turn.

    ``None`` values in a layer mean "not given" (so unset command-line options fall through).
    """
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace("-", "_")
            if key not in names:
                raise unknown_option(where, key, names)
            if value is not None:
                values[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def unknown_option(section: str, key: str, known) -> ConfigError:
    """The one-line error for a key no config of ``section`` has: the key, its section, the
    nearest known key (difflib) and the known ones."""
    known = sorted(known)
    nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean '{nearest[0]}'? " if nearest else ""
    where = f"in section '{section}' " if section else ""
    return ConfigError(f"unknown option '{section + '.' if section else ''}{key}' {where}"
                       f"({hint}known: {', '.join(known)})")


def to_dict(config: Any) -> dict:
    """Plain JSON-able dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """YAML gives lists and ints where the dataclass wants tuples and floats: fix those; a
    number option given something else is a ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where) if len(non_none) == 1 else value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"option '{where}' takes a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return _number(float, value, where)
    if hint is int and isinstance(value, str):
        return _number(int, value, where)
    if hint is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option '{where}' takes true/false, got {value!r}")
    _check_type(value, hint, where)
    return value


# What a number or flag option accepts once coerced; a wrong type is a one-line error here
# rather than a traceback deep inside the stage (or an artifact's config that loads but is
# wrong). Text options are left to their own checks: some parse lists too (probe layers).
_ACCEPTS = {int: (int,), float: (float, int), bool: (bool,)}
_NAMES = {int: "an integer", float: "a number", bool: "true/false"}


def _check_type(value: Any, hint: Any, where: str) -> None:
    accepted = _ACCEPTS.get(hint)
    if accepted is None:
        return
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"option '{where}' takes {_NAMES[hint]}, got {value!r}")


def _number(kind, value, where):
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"option '{where}' takes a number, got {value!r}") from None


def recipe_section(recipe: str | Path | None, section: str) -> dict:
    """The ``section`` mapping of a recipe file, or {} when no recipe was given."""
    if not recipe:
        return {}
    value = load_yaml(recipe).get(section) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{recipe}: section '{section}' must be a mapping")
    return value
