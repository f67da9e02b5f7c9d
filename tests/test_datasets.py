"""Dataset layouts -> clips, and train/val/test splits.

Each layout fixture mimics the real dataset's folders and metadata columns with a handful of
empty placeholder files (scanning never opens them).
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import Clip
from tokenlm.data.layouts import detect_layout, scan_dataset
from tokenlm.data.splits import SplitConfig, assign_splits


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def splits_of(clips) -> dict[str, str]:
    return {c.id: c.split for c in clips}


# ---- layout fixtures ------------------------------------------------------------------------

ESC50_CLASSES = [(0, "dog"), (1, "rooster"), (20, "crying_baby")]


@pytest.fixture
def esc50(tmp_path):
    """meta/esc50.csv with ESC-50's columns; audio/{fold}-{src_file}-{take}-{target}.wav.
    Two takes cut from one source recording share its fold (as in the real set)."""
    root = tmp_path / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, category in ESC50_CLASSES:
            src = f"{100000 + 37 * fold + target}"
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                rows.append([name, fold, target, category, str(target in (0, 1)), src, take])
                touch(root / "audio" / name)
    write_csv(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    (root / "README.md").write_text("ESC-50\n")
    return root


@pytest.fixture
def urbansound(tmp_path):
    """metadata/UrbanSound8K.csv with its columns; audio/fold<k>/{fsID}-{classID}-{occ}-{slice}.wav."""
    root = tmp_path / "UrbanSound8K"
    classes = [(3, "dog_bark"), (6, "gun_shot"), (9, "street_music")]
    rows = []
    for fold in range(1, 11):
        for class_id, name in classes:
            fs_id = 7000 + 10 * fold + class_id
            for slice_id in range(2):
                file = f"{fs_id}-{class_id}-0-{slice_id}.wav"
                rows.append([file, fs_id, 0.5 * slice_id, 0.5 * slice_id + 4.0, 1, fold, class_id, name])
                touch(root / "audio" / f"fold{fold}" / file)
    write_csv(root / "metadata" / "UrbanSound8K.csv",
              ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return root


GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


@pytest.fixture
def gtzan(tmp_path):
    """genres/<genre>/<genre>.000NN.wav, 10 genres x 10 clips (the real set has 100 each)."""
    root = tmp_path / "gtzan"
    for genre in GENRES:
        for n in range(10):
            touch(root / "genres" / genre / f"{genre}.{n:05d}.wav")
    touch(root / "genres" / "blues" / "._blues.00000.txt")  # stray non-audio file
    return root


SPEAKERS = ["0a7c2a8d", "0b09edd3", "1a892463", "2bdbe5f7", "3b3d2f59", "c1d39ce8"]


@pytest.fixture
def speechcommands(tmp_path):
    """<word>/<speaker>_nohash_<n>.wav, validation_list.txt, testing_list.txt (paths relative
    to the root) and _background_noise_/ (long noise files, not a class)."""
    root = tmp_path / "speech_commands_v0.02"
    val, test = [], []
    for word in ["yes", "no", "up"]:
        for si, speaker in enumerate(SPEAKERS):
            for n in range(2):
                rel = f"{word}/{speaker}_nohash_{n}.wav"
                touch(root / rel)
                (val if si == 4 else test if si == 5 else []).append(rel)
    touch(root / "_background_noise_" / "white_noise.wav")
    touch(root / "_background_noise_" / "running_tap.wav")
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    return root


# ---- layouts ------------------------------------------------------------------------------

def test_folder_per_class(tmp_path):
    root = tmp_path / "sounds"
    for rel in ["dog/a.wav", "dog/outdoor/b.FLAC", "cat/c.ogg", "cat/notes.txt", "cat/d.mp3"]:
        touch(root / rel)
    assert detect_layout(root) == "folders"
    layout, clips = scan_dataset(root)
    assert layout == "folders"
    by_id = {c.id: c for c in clips}
    assert set(by_id) == {"dog/a", "dog/outdoor/b", "cat/c", "cat/d"}  # .txt ignored, any case of extension
    assert by_id["dog/outdoor/b"].label == "dog"  # the first folder is the label
    assert by_id["cat/c"].path == str(root / "cat" / "c.ogg")
    assert all(c.split is None and c.fold is None for c in clips)


def test_csv_manifest_with_split_and_group(tmp_path):
    root = tmp_path / "set"
    for name in ["a", "b", "c", "d"]:
        touch(root / "clips" / f"{name}.wav")
    write_csv(root / "manifest.csv", ["path", "label", "split", "group"], [
        ["clips/a.wav", "x", "training", "s1"], ["clips/b.wav", "y", "validation", "s2"],
        ["clips/c.wav", "x", "test", ""], ["clips/d.wav", "y", "dev", "s3"],
    ])
    assert detect_layout(root) == "manifest"
    layout, clips = scan_dataset(root)
    assert layout == "manifest"
    assert [(c.id, c.label, c.split, c.group) for c in clips] == [
        ("clips/a", "x", "train", "s1"), ("clips/b", "y", "val", "s2"),
        ("clips/c", "x", "test", None), ("clips/d", "y", "val", "s3"),
    ]
    assert clips[0].path == str(root / "clips" / "a.wav")  # relative to the manifest
    assert assign_splits(clips, SplitConfig()) == clips  # official splits are kept as they are


def test_manifest_file_given_directly_with_folds_and_absolute_paths(tmp_path):
    audio = touch(tmp_path / "elsewhere" / "z.wav")
    manifest = tmp_path / "lists" / "my.csv"
    rows = [[str(audio), "x", 3]] + [[f"../elsewhere/{i}.wav", "y", i % 3 + 1] for i in range(5)]
    write_csv(manifest, ["path", "label", "fold"], rows)
    assert detect_layout(manifest) == "manifest"
    _, clips = scan_dataset(manifest, allow_outside=True)  # outside the manifest's folder: allowed
    assert clips[0].path == str(audio) and clips[0].fold == 3
    assert clips[1].path == str(tmp_path / "elsewhere" / "0.wav")  # absolute and resolved
    assert {c.split for c in assign_splits(clips, SplitConfig())} == {"train", "val", "test"}


def test_jsonl_manifest_with_ids_and_folds(tmp_path):
    root = tmp_path / "set"
    rows = [{"id": f"clip{i}", "path": f"{i}.wav", "label": i % 2, "fold": i % 4 + 1, "group": f"g{i // 2}"}
            for i in range(8)]
    (root).mkdir()
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    layout, clips = scan_dataset(root)
    assert layout == "manifest"
    assert [c.id for c in clips] == [f"clip{i}" for i in range(8)]
    assert clips[3].label == "1" and clips[3].fold == 4 and clips[3].group == "g1"
    split = splits_of(assign_splits(clips, SplitConfig()))
    assert split["clip3"] == "test" and split["clip2"] == "val" and split["clip0"] == "train"


def test_manifest_errors_are_config_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    write_csv(bad, ["file", "label"], [["a.wav", "x"]])
    with pytest.raises(ConfigError, match="'path' column"):
        scan_dataset(bad)
    unknown = tmp_path / "unknown_split.csv"
    write_csv(unknown, ["path", "label", "split"], [["a.wav", "x", "holdout"]])
    with pytest.raises(ConfigError, match="unknown split 'holdout'"):
        scan_dataset(unknown)
    short_row = tmp_path / "short_row.csv"
    short_row.write_text("path,label\na.wav,x\n\n,y\n")  # a row without a path
    with pytest.raises(ConfigError, match="entry 2 has no path"):
        scan_dataset(short_row)
    bad_fold = tmp_path / "bad_fold.csv"
    write_csv(bad_fold, ["path", "label", "fold"], [["a.wav", "x", "1.5"]])
    with pytest.raises(ConfigError, match="fold must be a whole number"):
        scan_dataset(bad_fold)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.wav", "label": "x"}\n{"path": "b.wav", "label": \n')
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        scan_dataset(jsonl)
    jsonl.write_text('{"path": "a.wav"}\n{"label": "x"}\n')
    with pytest.raises(ConfigError, match="entry 2 has no path"):
        scan_dataset(jsonl)


def test_esc50(esc50):
    assert detect_layout(esc50) == "esc50"
    layout, clips = scan_dataset(esc50)
    assert layout == "esc50" and len(clips) == 5 * 3 * 2
    clip = next(c for c in clips if c.id == "2-100074-A-0")
    assert clip.label == "dog" and clip.fold == 2 and clip.group == "100074"
    assert clip.path == str(esc50 / "audio" / "2-100074-A-0.wav")
    assert all(Path(c.path).is_file() for c in clips)

    split = assign_splits(clips, SplitConfig())
    folds = {(c.fold, c.split) for c in split}
    assert folds == {(1, "train"), (2, "train"), (3, "train"), (4, "val"), (5, "test")}
    # another test fold: the fold before it is val, cyclically
    folds = {(c.fold, c.split) for c in assign_splits(clips, SplitConfig(test_fold=1))}
    assert folds == {(1, "test"), (5, "val"), (2, "train"), (3, "train"), (4, "train")}
    folds = {(c.fold, c.split) for c in assign_splits(clips, SplitConfig(test_fold=3))}
    assert (3, "test") in folds and (2, "val") in folds
    with pytest.raises(ConfigError, match="test_fold 6"):
        assign_splits(clips, SplitConfig(test_fold=6))


def test_urbansound8k(urbansound):
    layout, clips = scan_dataset(urbansound)
    assert layout == "urbansound8k" and len(clips) == 10 * 3 * 2
    clip = next(c for c in clips if c.id == "7073-3-0-1")
    assert clip.label == "dog_bark" and clip.fold == 7 and clip.group == "7073"
    assert clip.path == str(urbansound / "audio" / "fold7" / "7073-3-0-1.wav")
    assert all(Path(c.path).is_file() for c in clips)
    split = assign_splits(clips, SplitConfig())
    assert {c.fold for c in split if c.split == "test"} == {10}
    assert {c.fold for c in split if c.split == "val"} == {9}
    assert Counter(c.split for c in split) == {"train": 48, "val": 6, "test": 6}


def test_gtzan(gtzan):
    layout, clips = scan_dataset(gtzan)
    assert layout == "gtzan" and len(clips) == 100
    assert {c.label for c in clips} == set(GENRES)
    assert next(c for c in clips if c.id == "jazz/jazz.00005").label == "jazz"
    split = assign_splits(clips, SplitConfig())
    for genre in GENRES:  # no official split: stratified, every genre on every side
        counts = Counter(c.split for c in split if c.label == genre)
        assert counts["val"] >= 1 and counts["test"] >= 1 and counts["train"] >= 6


def test_gtzan_kaggle_layout(tmp_path):
    # the widely used Kaggle copy names the folder genres_original/
    root = tmp_path / "Data"
    for genre in GENRES[:3]:
        for n in range(4):
            touch(root / "genres_original" / genre / f"{genre}.{n:05d}.wav")
    touch(root / "features_30_sec.csv")
    layout, clips = scan_dataset(root)
    assert layout == "gtzan"
    assert {c.label for c in clips} == set(GENRES[:3])


def test_speechcommands(speechcommands):
    layout, clips = scan_dataset(speechcommands)
    assert layout == "speechcommands"
    assert {c.label for c in clips} == {"yes", "no", "up"}  # _background_noise_ is not a class
    assert len(clips) == 3 * len(SPEAKERS) * 2
    clip = next(c for c in clips if c.id == "no/c1d39ce8_nohash_1")
    assert clip.group == "c1d39ce8" and clip.split == "test"
    by_speaker = defaultdict(set)
    for c in clips:
        by_speaker[c.group].add(c.split)
    assert by_speaker[SPEAKERS[4]] == {"val"} and by_speaker[SPEAKERS[0]] == {"train"}
    assert assign_splits(clips, SplitConfig()) == clips  # the official lists are kept


def test_missing_empty_and_duplicate_ids(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(ConfigError, match="no audio files"):
        scan_dataset(tmp_path / "empty")
    touch(tmp_path / "dup" / "x" / "a.wav")
    touch(tmp_path / "dup" / "x" / "a.flac")  # same id x/a
    with pytest.raises(ConfigError, match="not unique"):
        scan_dataset(tmp_path / "dup")


# ---- group-aware splits -------------------------------------------------------------------

def single_label_groups(labels=4, groups=10, seed=0) -> list[Clip]:
    rng = random.Random(seed)
    return [Clip(id=f"L{li}/g{g}/{i}", path=f"L{li}/g{g}/{i}.wav", label=f"L{li}", group=f"L{li}-g{g}")
            for li in range(labels) for g in range(groups) for i in range(rng.randint(1, 4))]


def cross_label_groups(speakers=40, words=8, per_speaker=3, seed=0) -> list[Clip]:
    """Speakers (groups) each saying a few different words (labels)."""
    rng = random.Random(seed)
    return [Clip(id=f"s{s}/w{w}/{i}", path=f"s{s}_w{w}_{i}.wav", label=f"w{w}", group=f"s{s}")
            for s in range(speakers) for w in rng.sample(range(words), per_speaker) for i in range(2)]


def check_groups_on_one_side(clips):
    sides = defaultdict(set)
    for c in clips:
        sides[c.group].add(c.split)
    assert all(len(s) == 1 for s in sides.values())


def check_every_class_everywhere(clips, min_groups=3):
    groups = defaultdict(set)
    for c in clips:
        groups[c.label].add(c.group or c.id)
    for split in ("train", "val", "test"):
        present = {c.label for c in clips if c.split == split}
        missing = {label for label, g in groups.items() if len(g) >= min_groups} - present
        assert not missing, f"{split} lacks {sorted(missing)}"


def check_fractions(clips, tolerance=0.05):
    counts = Counter(c.split for c in clips)
    for split, target in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert abs(counts[split] / len(clips) - target) <= tolerance, dict(counts)


@pytest.mark.parametrize("make", [single_label_groups, cross_label_groups], ids=["single-label", "cross-label"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_properties(make, seed):
    clips = make(seed=seed)
    split = assign_splits(clips, SplitConfig(seed=seed))
    assert [c.id for c in split] == [c.id for c in clips]  # order kept, nothing lost
    assert all(c.split in ("train", "val", "test") for c in split)
    check_groups_on_one_side(split)
    check_every_class_everywhere(split)
    check_fractions(split)


@pytest.mark.parametrize("make", [single_label_groups, cross_label_groups], ids=["single-label", "cross-label"])
def test_group_split_is_deterministic_and_independent_of_listing_order(make):
    clips = make()
    first = splits_of(assign_splits(clips, SplitConfig()))
    assert splits_of(assign_splits(clips, SplitConfig())) == first
    for seed in range(3):
        shuffled = clips[:]
        random.Random(seed).shuffle(shuffled)
        assert splits_of(assign_splits(shuffled, SplitConfig())) == first
    assert splits_of(assign_splits(clips, SplitConfig(seed=7))) != first  # the seed matters


def test_exactly_three_groups_per_class_still_reach_val_and_test():
    clips = single_label_groups(labels=5, groups=3)
    split = assign_splits(clips, SplitConfig())
    check_every_class_everywhere(split)
    check_groups_on_one_side(split)


def test_class_with_fewer_than_three_groups_stays_in_train():
    clips = single_label_groups(labels=2, groups=6) + [
        Clip(id=f"rare/{i}", path=f"rare{i}.wav", label="rare", group="only") for i in range(5)]
    split = assign_splits(clips, SplitConfig())
    assert {c.split for c in split if c.label == "rare"} == {"train"}


def test_clips_without_group_are_their_own_group():
    clips = [Clip(id=f"{label}/{i}", path="x.wav", label=label) for label in "abcd" for i in range(20)]
    split = assign_splits(clips, SplitConfig())
    counts = Counter(c.split for c in split)
    assert counts == {"train": 56, "val": 12, "test": 12}
    check_every_class_everywhere(split)


def test_custom_fractions_and_unlabelled_clips():
    clips = [Clip(id=f"c{i}", path="x.wav", group=f"g{i // 2}") for i in range(200)]
    split = assign_splits(clips, SplitConfig(val_fraction=0.1, test_fraction=0.3))
    counts = Counter(c.split for c in split)
    assert abs(counts["val"] - 20) <= 2 and abs(counts["test"] - 60) <= 2
    check_groups_on_one_side(split)
    no_val = assign_splits(clips, SplitConfig(val_fraction=0.0))
    assert "val" not in {c.split for c in no_val}


def test_partial_split_or_fold_columns_are_refused():
    clips = [Clip(id=f"c{i}", path=f"c{i}.wav", label="x", split="train" if i else None) for i in range(5)]
    with pytest.raises(ConfigError, match="have a split"):
        assign_splits(clips, SplitConfig())
    clips = [Clip(id=f"c{i}", path=f"c{i}.wav", label="x", fold=i % 3 + 1 if i else None) for i in range(6)]
    with pytest.raises(ConfigError, match="have a fold"):
        assign_splits(clips, SplitConfig())


def test_too_few_folds_is_an_error():
    clips = [Clip(id=f"c{i}", path=f"c{i}.wav", label="x", fold=i % 2 + 1) for i in range(6)]
    with pytest.raises(ConfigError, match="at least 3 folds"):
        assign_splits(clips, SplitConfig())


def test_split_config_validation():
    with pytest.raises(ValueError):
        SplitConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError):
        SplitConfig(val_fraction=-0.1)


def test_folds_win_over_groups():
    clips = [Clip(id=f"c{i}", path="x.wav", label="x", group="same", fold=i % 5 + 1) for i in range(10)]
    split = assign_splits(clips, SplitConfig())
    assert {c.fold: c.split for c in split} == {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
    assert replace(clips[0], split="train") == split[0]


def test_official_train_and_test_without_val_get_val_carved_from_train():
    """A DatasetDict (or audiofolder) of train and test only: val comes out of train, group-aware,
    as an unsplit dataset's does; the official test split is untouched."""
    train = [Clip(id=f"tr{i}", path=f"/d/tr{i}.wav", label=f"c{i % 2}", group=f"g{i // 2}", split="train")
             for i in range(40)]
    test = [Clip(id=f"te{i}", path=f"/d/te{i}.wav", label=f"c{i % 2}", split="test") for i in range(10)]
    out = assign_splits(train + test, SplitConfig(val_fraction=0.2, seed=0))
    split_of = {c.id: c.split for c in out}
    assert all(split_of[c.id] == "test" for c in test)
    val = [c for c in out if c.split == "val"]
    assert 4 <= len(val) <= 12 and all(c.id.startswith("tr") for c in val)
    groups = defaultdict(set)
    for c in out[:40]:
        groups[c.group].add(c.split)
    assert all(len(s) == 1 for s in groups.values())  # a group stays on one side
    assert {c.label for c in val} == {"c0", "c1"}
    assert assign_splits(train + test, SplitConfig(val_fraction=0.2, seed=0)) == out  # deterministic
    with_val = [replace(c, split="val") if c.id == "tr0" else c for c in train + test]
    assert assign_splits(with_val, SplitConfig()) == with_val  # an official val is kept as it is
