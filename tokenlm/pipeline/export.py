"""``tokenlm export``: a run's codes in the formats other tools read.

    tokenlm export runs/demo --format units      # GSLM: one "id|u1 u2 ..." line per clip
    tokenlm export runs/demo --format hf -K 256  # a datasets DatasetDict (save_to_disk)
    tokenlm export runs/demo --format npy --out codes/

Exports RUN/tokens/k{K} into OUT (default RUN/export/<format>/k{K}) and each task's codes
(RUN/tasks/<task>/tokens/k{K}, where encoded) into OUT/tasks/<task>:

- units: {split}.units, one line per clip, ``id|u1 u2 ...`` as fairseq's GSLM speech2unit
  (quantize_with_kmeans) writes them, then a labels file {split}.labels.jsonl ({id, label};
  none for an unlabelled stream).
- hf: a DatasetDict saved with ``save_to_disk``, one Dataset per split with columns id, label
  (a ClassLabel of the sorted label names when every clip has one, else text), split, codes
  (uint16); needs the hf extra.
- npy: {split}/{n:06d}.npy per clip (uint16, in the store's order) and index.jsonl
  ({id, label, split, file}).

Splits have one name in every format, tokenlm's own: ``train``, ``val``, ``test`` (as in the
run's manifest; HF takes any split name). Encode-only codes of an unlabelled folder with no
splits (``tokenlm tokenize OUT --tokenizer ...``) are one stream, ``all``. Without ``-K`` the
K is the run's current one, else the only one tokenized (an encode-only OUT has no tokenizer).

Tokens of several codes per patch (``tokenizer.levels`` / ``groups``) are exported as one
unit stream per level, not flattened (a flattened stream would interleave levels that mean
different things): units writes level 1 to {split}.units, as for one level, so a tool that
reads one stream gets the coarse codes, and level l+1 to {split}.level{l}.units; npy saves each
clip as a (patches, levels) array; hf's codes column holds one list of levels per patch.

Each format reads back to exactly the stored codes (``read_export``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_jsonl, write_jsonl
from tokenlm.core.outputs import publish_folder
from tokenlm.data.store import RaggedSplit
from tokenlm.run import lock as runlock
from tokenlm.run.artifacts import read_stage
from tokenlm.run.rundir import SPLITS, STREAM_NAME, STREAM_SPLIT, RunDir, as_run, is_finished, read_tokens_meta

FORMATS = ("units", "hf", "npy")


def export(run: str | Path | RunDir, fmt: str, codebook_size: int | None = None, out: str | Path | None = None) -> Path:
    """Write the run's codes at K = ``codebook_size`` (module docstring), and each encoded
    task's, to ``out`` in format ``fmt``. Returns ``out``."""
    run = as_run(run)
    if codebook_size is not None and codebook_size < 1:
        raise ConfigError(f"-K must be a codebook size of at least 1, got {codebook_size} (leave it out for the "
                          f"run's current K)")
    if not run.root.is_dir():
        raise ArtifactError(f"{run.root}: no such run folder")
    with runlock.holding(run.lock_root):  # the tokens cannot be rebuilt under the export
        k = export_size(run, codebook_size)
        out = Path(out) if out else run.export(fmt, k)
        stores = [(Path(), run.tokens(k))] + [(Path("tasks") / name, run.task(name).tokens(k))
                                              for name in run.task_names() if is_finished(run.task(name).tokens(k))]
        levels = [read_tokens_meta(tokens, k).levels for _, tokens in stores]  # finished, complete, of this K

        def write(work: Path) -> None:
            for (where, tokens), n_levels in zip(stores, levels):
                WRITERS[fmt](_clips(tokens, n_levels), work / where, _names(tokens))

        # Built beside OUT and swapped in whole: a kill leaves the previous export (or none),
        # no stale file of an earlier export stays, and a folder of the user's is refused.
        publish_folder(out, write, legacy=_is_unmarked_export)
    return out


def _is_unmarked_export(folder: Path) -> bool:
    """An export written before exports were marked: in RUN/export/<format>/k<K>, nothing else."""
    return folder.parent.parent.name == "export" and folder.parent.name in FORMATS and folder.name[1:].isdigit()


def export_size(run: RunDir, codebook_size: int | None) -> int:
    """The K to export: the one asked for (which must be tokenized), else the run's current K,
    else the only K tokenized (an encode-only OUT); a missing one lists those there are."""
    if not run.root.is_dir():
        raise ArtifactError(f"{run.root}: no such run folder")
    have = run.tokenized_sizes()
    listed = ", ".join(f"K={k}" for k in have) or "none: run `tokenlm tokenize` first"
    if codebook_size is not None:
        if codebook_size not in have:
            raise ArtifactError(f"{run.root} has no codes at K={codebook_size} (it has: {listed})")
        return codebook_size
    current = run.codebook_size_or_none()
    if current is not None:
        return current
    if len(have) == 1:
        return have[0]
    raise ArtifactError(f"{run.root}: which codebook? pass -K (it has: {listed})")


def _names(tokens: Path) -> dict[str, str]:
    """Stored split -> its exported name: itself, or the one stream's name (module docstring)."""
    if read_stage(tokens).get("config", {}).get("stream"):
        return {STREAM_SPLIT: STREAM_NAME}
    return {split: split for split in SPLITS}


def _clips(tokens: Path, levels: int = 1):
    """(split, index row, codes) of every stored clip, split by split: codes (T,), or (T, L)."""
    for split in SPLITS:
        for row, codes in RaggedSplit(tokens, split, "uint16", width=levels):
            yield split, row, np.asarray(codes, dtype=np.uint16)


def _write_units(clips, out: Path, names: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = {}  # (split, level) -> lines
    labels = {split: [] for split in names}
    for split, row, codes in clips:
        if "|" in row["id"] or "\n" in row["id"]:
            raise ArtifactError(f"clip id {row['id']!r} holds '|' or a line break: it cannot be a unit file's name")
        streams = [codes] if codes.ndim == 1 else list(codes.T)  # one stream per level
        for level, stream in enumerate(streams):
            lines.setdefault((split, level), []).append(f"{row['id']}|{' '.join(map(str, stream.tolist()))}\n")
        labels[split].append({"id": row["id"], "label": row.get("label")})
    levels = 1 + max((level for _, level in lines), default=0)
    for split, name in names.items():
        for level in range(levels):
            (out / units_file(name, level)).write_text("".join(lines.get((split, level), [])))
        if name != STREAM_NAME or any(row["label"] is not None for row in labels[split]):  # an unlabelled stream has none
            write_jsonl(out / f"{name}.labels.jsonl", labels[split])


def units_file(split: str, level: int) -> str:
    """Level 0's stream is {split}.units (what one level writes); level l's {split}.level{l}.units."""
    return f"{split}.units" if level == 0 else f"{split}.level{level}.units"


def _write_npy(clips, out: Path, names: dict[str, str]) -> None:
    index = []
    for n, (split, row, codes) in enumerate(clips):
        file = Path(names[split]) / f"{n:06d}.npy"  # numbered: a clip id may hold any character
        (out / names[split]).mkdir(parents=True, exist_ok=True)
        np.save(out / file, codes)
        index.append({"id": row["id"], "label": row.get("label"), "split": names[split], "file": file.as_posix()})
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "index.jsonl", index)


def _write_hf(clips, out: Path, names: dict[str, str]) -> None:
    from tokenlm.data.hf_datasets import require_datasets

    datasets = require_datasets()
    columns = {split: {"id": [], "label": [], "split": [], "codes": []} for split in names}
    multi = False
    for split, row, codes in clips:
        multi = multi or codes.ndim == 2
        for name, value in (("id", row["id"]), ("label", row.get("label")), ("split", names[split]),
                            ("codes", codes)):
            columns[split][name].append(value)
    labels = [label for c in columns.values() for label in c["label"]]
    if labels and all(label is not None for label in labels):  # class names, as datasets' audiofolder gives
        label_feature = datasets.ClassLabel(names=sorted(set(labels)))
        for c in columns.values():
            c["label"] = [label_feature.str2int(label) for label in c["label"]]
    else:
        label_feature = datasets.Value("string")
    features = datasets.Features({"id": datasets.Value("string"), "label": label_feature,
                                  "split": datasets.Value("string"),
                                  "codes": datasets.Sequence(datasets.Sequence(datasets.Value("uint16")) if multi
                                                             else datasets.Value("uint16"))})
    parts = {names[s]: datasets.Dataset.from_dict(c, features=features) for s, c in columns.items() if c["id"]}
    datasets.DatasetDict(parts).save_to_disk(str(out))


WRITERS = {"units": _write_units, "npy": _write_npy, "hf": _write_hf}


def _read_units(path: Path) -> dict[str, np.ndarray]:
    streams = {}
    for line in path.read_text().splitlines():
        clip_id, units = line.rsplit("|", 1)
        streams[clip_id] = np.array(units.split(), dtype=np.uint16)
    return streams


def read_export(out: str | Path, fmt: str) -> dict[str, dict[str, np.ndarray]]:
    """split -> clip id -> codes, read back from an export (what a user of the format sees;
    a split with no clips is absent, except in units, which writes every split's file)."""
    out = Path(out)
    found: dict[str, dict[str, np.ndarray]] = {}
    if fmt == "units":
        for path in sorted(p for p in out.glob("*.units") if ".level" not in p.name):
            streams = [_read_units(path)]
            while (out / units_file(path.stem, len(streams))).is_file():
                streams.append(_read_units(out / units_file(path.stem, len(streams))))
            found[path.stem] = {clip_id: codes if len(streams) == 1 else np.stack([s[clip_id] for s in streams], axis=1)
                                for clip_id, codes in streams[0].items()}
    elif fmt == "npy":
        for row in read_jsonl(out / "index.jsonl"):
            found.setdefault(row["split"], {})[row["id"]] = np.load(out / row["file"])
    else:
        from tokenlm.data.hf_datasets import require_datasets

        for name, part in require_datasets().load_from_disk(str(out)).items():
            found[name] = {row["id"]: np.asarray(row["codes"], dtype=np.uint16) for row in part}
    return found
