"""Every key of a recipe checked against the config that reads it, before any stage runs.

Stages build their configs only when they start (tokenlm.pipeline.registry), so a typo in the last
stage's section would otherwise surface hours into ``tokenlm run``. ``check_recipe`` parses
each section the recipe holds with the very function its stage uses (so what it accepts is
exactly what the stage accepts), and the sections that are plain mappings against their
known keys; the first problem is one line naming the key, its section and the nearest known
key (tokenlm.core.config.unknown_option).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from tokenlm.core.config import build, unknown_option
from tokenlm.core.errors import ConfigError

# Sections read key by key (no dataclass): the keys their readers look up.
PLAIN_KEYS = {
    "run": ("dir", "device", "keep_checkpoints", "log_to"),  # stages/run.py, pipeline.py, stages/options.py
    "data": ("path", "demo", "seed", "strict", "hash_content", "allow_outside"),  # stages/data.py, prepare.py
    "pretrain": ("path", "split", "corpus_hours", "corpus_seed", "corpus_noise", "corpus_reverb"),  # stages/data.py
}
TASK_KEYS = ("path", "demo", "seed")  # one entry of tasks: (tokenlm.pipeline.tasks, stages/data.py)


def _features(section):
    from tokenlm.data.features import FeatureConfig

    return build(FeatureConfig, section, where="features")


def _split(section, where="split"):
    from tokenlm.data.splits import SplitConfig

    return build(SplitConfig, section, where=where)


def _tokenizer(section):
    from tokenlm.pipeline.tokenize import tokenizer_config

    return tokenizer_config(section, {})


def _codebook(section):
    from tokenlm.tokenizer.codebook import CodebookConfig

    return build(CodebookConfig, section, where="codebook")


def _lm(section):
    from tokenlm.pipeline.pretrain import lm_configs

    return lm_configs(section)


def _probe(section):
    from tokenlm.pipeline.probe_config import configs

    return configs(section)


def _vocoder(section):
    from tokenlm.pipeline.vocoder import VocoderConfig

    return VocoderConfig.from_section(section)


def _sweep(section):
    from tokenlm.pipeline.sweep import SweepConfig

    return build(SweepConfig, section, where="sweep")


def _scale(section):
    from tokenlm.pipeline.scale import ScaleConfig

    return build(ScaleConfig, section, where="scale")


def _rawlm(section):
    from tokenlm.pipeline.rawlm import RawLMConfig

    return build(RawLMConfig, section, where="rawlm")


def _engine(section):
    from tokenlm.engine import engine_config

    return engine_config(section)


# Section -> the parser its stage uses. ``baselines`` is read as the probe's keys.
PARSERS: dict[str, Callable[[dict], Any]] = {
    "features": _features, "split": _split, "tokenizer": _tokenizer, "codebook": _codebook, "lm": _lm,
    "probe": _probe, "baselines": _probe, "vocoder": _vocoder, "sweep": _sweep, "scale": _scale,
    "rawlm": _rawlm, "engine": _engine,
}


def check_recipe(sections: Mapping[str, Any], recipe: str = "recipe") -> None:
    """Raise a one-line ConfigError for the first key of ``sections`` no stage reads, or a
    value its config refuses."""
    from tokenlm.core.overrides import SECTIONS

    for name, section in sections.items():
        if name not in SECTIONS:
            nearest = difflib.get_close_matches(str(name), SECTIONS, n=1, cutoff=0.5)
            hint = f"did you mean '{nearest[0]}'? " if nearest else ""
            raise ConfigError(f"{recipe}: unknown section '{name}' ({hint}sections: {', '.join(SECTIONS)})")
        if name in ("stages", "tasks", "levers") or section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{recipe}: section '{name}' must be a mapping")
        if name in PLAIN_KEYS:
            _check_keys(name, section, PLAIN_KEYS[name])
        else:
            PARSERS[name](section)
    pretrain_split = (sections.get("pretrain") or {}).get("split")
    if pretrain_split:
        _split(pretrain_split, where="pretrain.split")
    _check_tasks(sections.get("tasks"))
    _check_levers(sections.get("lm"), sections.get("levers"))


def _check_keys(section: str, values: Mapping[str, Any], known) -> None:
    for key in values:
        if key not in known:
            raise unknown_option(section, str(key), known)


def _check_tasks(tasks) -> None:
    if isinstance(tasks, dict):
        for name, spec in tasks.items():
            if isinstance(spec, dict):
                _check_keys(f"tasks.{name}", spec, TASK_KEYS)


def _check_levers(lm: Mapping | None, levers) -> None:
    """Each lever is ``lm:`` keys layered on the recipe's (tokenlm.pipeline.scale)."""
    if not isinstance(levers, dict):
        return
    lm = dict(lm or {})
    for name, changes in levers.items():
        if not isinstance(changes, dict):
            raise ConfigError(f"levers.{name}: must map lm keys to values")
        training = {**(lm.get("training") or {}), **(changes.get("training") or {})}
        _lm({**lm, **changes, "training": training})
