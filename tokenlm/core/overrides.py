"""Command-line overrides of a recipe: ``lm.training.steps=50``, ``probe.baselines=[vgg]``.

Each override is ``dotted.key=value``; the value is read as YAML (a number, true/false, a
list, a mapping, or text), and replaces that one key of the recipe, the sections above it
made as needed. The first part must be a section a recipe may hold (``SECTIONS``); the keys
below it are checked by the stage that reads them, like the recipe's own.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import yaml

from tokenlm.core.errors import ConfigError

# Every top-level section a recipe may hold (tokenlm.pipeline.registry's stages read them).
SECTIONS = ("run", "stages", "data", "pretrain", "tasks", "features", "split", "tokenizer", "codebook", "lm",
            "probe", "baselines", "vocoder", "rawlm", "sweep", "scale", "levers", "engine")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"lm.training.steps=50"`` -> (["lm", "training", "steps"], 50)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"override {text!r}: write it as section.key=value (e.g. lm.training.steps=50)")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"override {text!r}: unknown section '{parts[0]}' (sections: {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return [p.strip() for p in parts], value


def apply_overrides(recipe: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """A copy of ``recipe`` with each override applied in turn (the later one wins)."""
    out = copy.deepcopy(dict(recipe))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[:i + 1])
                raise ConfigError(f"override {text!r}: '{where}' is {child!r} in the recipe, not a section")
            node = child
        node[parts[-1]] = value
    return out
