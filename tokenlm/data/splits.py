"""Train/val/test splits of a dataset's clips.

Official splits or folds when the dataset has them; otherwise a deterministic split that
keeps each ``group`` (speaker, instrument, source recording) on one side only, so a probe
never meets a test speaker it trained on. One recording listed under two ids (same resolved
file, or same bytes when hashed) is one group (``link_duplicates``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import SPLITS, Clip


@dataclass(frozen=True)
class SplitConfig:
    """How clips without an official split are divided."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    test_fold: int | None = None  # fold datasets: the test fold (default: the last one)
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")


# ---- duplicates -----------------------------------------------------------------------

def link_duplicates(clips: list[Clip], content: dict[str, str] | None = None) -> tuple[list[Clip], list[list[str]]]:
    """One recording listed under several ids (same resolved path, or same ``content`` hash:
    clip id -> hash) must not land in train and test: its clips' groups are merged into one,
    so a group-aware split keeps them on one side. Returns the clips and the duplicate id sets."""
    same: dict[tuple, list[Clip]] = defaultdict(list)
    for clip in clips:  # segments of one file are different recordings: their span is part of the key
        span = (clip.start, clip.end)
        same[("path", clip.path, span)].append(clip)
        if content and content.get(clip.id):
            same[("content", content[clip.id], span)].append(clip)
    sets = [members for members in same.values() if len(members) > 1]
    if not sets:
        return clips, []
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    for members in sets:  # union of the members' groups; the smallest name stands for them
        roots = {root(_group_key(c)) for c in members}
        first = min(roots)
        for r in roots:
            parent[r] = first
    linked = [c if root(_group_key(c)) == _group_key(c) else replace(c, group=root(_group_key(c))) for c in clips]
    ids = {tuple(sorted(c.id for c in members)) for members in sets}
    return linked, [list(i) for i in sorted(ids)]


def _group_key(clip: Clip) -> str:
    """The group a split keeps together: a clip without one is its own."""
    return clip.group or f"clip:{clip.id}"


# ---- splits -----------------------------------------------------------------------------

def assign_splits(clips: list[Clip], config: SplitConfig) -> list[Clip]:
    """Give every clip a split: official ones kept, folds mapped, else a group-aware split."""
    if all(c.split for c in clips):
        return _carve_val(clips, config)
    _check_all_or_none(clips, "split", [c.split for c in clips])
    if all(c.fold is not None for c in clips):
        return _split_by_fold(clips, config)
    _check_all_or_none(clips, "fold", [c.fold for c in clips])
    return _split_by_group(clips, config)


def _carve_val(clips: list[Clip], config: SplitConfig) -> list[Clip]:
    """Official train and test but no val (a DatasetDict or audiofolder of train/test): val is
    ``val_fraction`` of the train clips, carved group-aware as an unsplit dataset's is; the
    official test split is left alone."""
    if any(c.split == "val" for c in clips) or config.val_fraction == 0:
        return clips
    train = [c for c in clips if c.split == "train"]
    if len(train) < 2:
        return clips
    carved = _split_by_group(train, SplitConfig(val_fraction=config.val_fraction, test_fraction=0.0, seed=config.seed))
    by_id = {c.id: c for c in carved}
    return [by_id.get(c.id, c) if c.split == "train" else c for c in clips]


def _check_all_or_none(clips: list[Clip], name: str, values: list) -> None:
    """A split or fold given for some clips only would be silently dropped: refuse instead."""
    missing = [c for c, v in zip(clips, values) if v is None]
    if len(missing) < len(clips):
        raise ConfigError(f"{len(clips) - len(missing)} clip(s) have a {name} and {len(missing)} do not "
                          f"(e.g. {missing[0].path}): give every clip a {name}, or none")


def _split_by_fold(clips: list[Clip], config: SplitConfig) -> list[Clip]:
    """The test fold is test, the fold before it (cyclically) is val, the rest train."""
    folds = sorted({c.fold for c in clips})
    if len(folds) < 3:
        raise ConfigError(f"a split by folds needs at least 3 folds (train, val, test), got {folds}")
    test_fold = folds[-1] if config.test_fold is None else config.test_fold
    if test_fold not in folds:
        raise ConfigError(f"test_fold {test_fold} is not one of the dataset's folds {folds}")
    val_fold = folds[folds.index(test_fold) - 1]
    names = {test_fold: "test", val_fold: "val"}
    return [replace(c, split=names.get(c.fold, "train")) for c in clips]


def _split_by_group(clips: list[Clip], config: SplitConfig) -> list[Clip]:
    """Whole groups go to one split. When no group spans two labels, each label is split on
    its own (stratified); else groups are split globally, val and test first taking groups
    that cover the labels they lack. Either way every label with three or more groups
    appears in val and test. A clip without a group is its own group."""
    groups_of_clip = [_group_key(c) for c in clips]
    labels_per_group: dict[str, set] = {}
    for clip, group in zip(clips, groups_of_clip):
        labels_per_group.setdefault(group, set()).add(clip.label)
    stratify = all(len(labels) == 1 for labels in labels_per_group.values())

    strata: dict[object, dict[str, int]] = {}  # stratum -> group -> clip count
    for clip, group in zip(clips, groups_of_clip):
        stratum = clip.label if stratify else None
        strata.setdefault(stratum, {}).setdefault(group, 0)
        strata[stratum][group] += 1

    split_of_group: dict[str, str] = {}
    for group_sizes in strata.values():
        split_of_group.update(_allocate_groups(group_sizes, labels_per_group, config))
    return [replace(c, split=split_of_group[g]) for c, g in zip(clips, groups_of_clip)]


def _allocate_groups(group_sizes: dict[str, int], labels_per_group: dict[str, set],
                     config: SplitConfig) -> dict[str, str]:
    """Walk the groups in a seeded hash order (independent of file order), giving each to the
    split furthest below its target clip count. Before that, test and then val each take
    groups until they hold every label that has three or more groups: greedily the group
    covering most of the labels still lacking (the earliest in that order on a tie), never a
    label's last group not yet taken, so train keeps every label too."""
    order = sorted(group_sizes, key=lambda g: hashlib.sha256(f"{config.seed}:{g}".encode()).hexdigest())
    total = sum(group_sizes.values())
    fractions = {"train": 1 - config.val_fraction - config.test_fraction,
                 "val": config.val_fraction, "test": config.test_fraction}
    filled = dict.fromkeys(SPLITS, 0)
    result = {}

    def assign(group, split):
        result[group] = split
        filled[split] += group_sizes[group]

    groups_per_label: dict[object, int] = {}
    for group in order:
        for label in labels_per_group[group]:
            groups_per_label[label] = groups_per_label.get(label, 0) + 1
    unassigned = dict(groups_per_label)  # label -> groups not yet given to test or val
    for split in ("test", "val"):
        if fractions[split] == 0:
            continue
        missing = {label for label, n in groups_per_label.items() if n >= 3}
        while missing:
            candidates = [
                g for g in order
                if g not in result and labels_per_group[g] & missing
                and all(unassigned[label] > 1 for label in labels_per_group[g])
            ]
            if not candidates:
                break
            best = max(candidates, key=lambda g: len(labels_per_group[g] & missing))  # first max wins
            assign(best, split)
            missing -= labels_per_group[best]
            for label in labels_per_group[best]:
                unassigned[label] -= 1
    for group in order:
        if group not in result:
            assign(group, max(SPLITS, key=lambda s: fractions[s] * total - filled[s]))
    return result
