"""``tokenlm export``: a run's codes in the formats other tools read.

    tokenlm export runs/demo --format units      # GSLM: one "id|u1 u2 ..." line per clip
    tokenlm export runs/demo --format hf -K 256  # a datasets DatasetDict (save_to_disk)
    tokenlm export runs/demo --format npy --out codes/

Exports RUN/tokens/k{K} into OUT (default RUN/export/<format>/k{K}) and each task's codes
(RUN/tasks/<task>/tokens/k{K}, where encoded) into OUT/tasks/<task>:

- units: {split}.units, one line per clip, ``id|u1 u2 ...`` as fairseq's GSLM speech2unit
  (quantize_with_kmeans) writes them, then a labels file {split}.labels.jsonl ({id, label}).
- hf: a DatasetDict saved with ``save_to_disk``, one Dataset per split (train, validation,
  test) with columns id, label, split, codes (uint16); needs the hf extra.
- npy: {split}/{n:06d}.npy per clip (uint16, in the store's order) and index.jsonl
  ({id, label, split, file}).

Each format reads back to exactly the stored codes (``read_export``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_jsonl, write_jsonl
from tokenlm.run.rundir import SPLITS, RunDir, is_finished, read_tokens_meta, as_run
from tokenlm.data.store import RaggedSplit

from tokenlm.run import lock as runlock
from tokenlm.core.errors import ConfigError
from tokenlm.core.outputs import publish_folder

FORMATS = ("units", "hf", "npy")


HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # HF's split names


def export(run: str | Path | RunDir, fmt: str, codebook_size: int | None = None, out: str | Path | None = None) -> Path:
    """Write the run's codes at K = ``codebook_size`` (default: the run's current K), and each
    encoded task's, to ``out`` in format ``fmt``. Returns ``out``."""
    run = as_run(run)
    if codebook_size is not None and codebook_size < 1:
        raise ConfigError(f"-K must be a codebook size of at least 1, got {codebook_size} (leave it out for the "
                          f"run's current K)")
    with runlock.holding(run.lock_root):  # the tokens cannot be rebuilt under the export
        k = codebook_size or run.codebook_size
        out = Path(out) if out else run.export(fmt, k)
        stores = [(Path(), run.tokens(k))] + [(Path("tasks") / name, run.task(name).tokens(k))
                                              for name in run.task_names() if is_finished(run.task(name).tokens(k))]
        for _, tokens in stores:
            read_tokens_meta(tokens, k)  # finished, complete, and of this K

        def write(work: Path) -> None:
            for where, tokens in stores:
                WRITERS[fmt](_clips(tokens), work / where)

        # Built beside OUT and swapped in whole: a kill leaves the previous export (or none),
        # no stale file of an earlier export stays, and a folder of the user's is refused.
        publish_folder(out, write, legacy=_is_unmarked_export)
    return out


def _is_unmarked_export(folder: Path) -> bool:
    """An export written before exports were marked: in RUN/export/<format>/k<K>, nothing else."""
    return folder.parent.parent.name == "export" and folder.parent.name in FORMATS and folder.name[1:].isdigit()


def _clips(tokens: Path):
    """(split, index row, codes) of every stored clip, split by split."""
    for split in SPLITS:
        for row, codes in RaggedSplit(tokens, split, "uint16"):
            yield split, row, np.asarray(codes, dtype=np.uint16)


def _write_units(clips, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = {split: [] for split in SPLITS}
    labels = {split: [] for split in SPLITS}
    for split, row, codes in clips:
        if "|" in row["id"] or "\n" in row["id"]:
            raise ArtifactError(f"clip id {row['id']!r} holds '|' or a line break: it cannot be a unit file's name")
        lines[split].append(f"{row['id']}|{' '.join(map(str, codes.tolist()))}\n")
        labels[split].append({"id": row["id"], "label": row.get("label")})
    for split in SPLITS:
        (out / f"{split}.units").write_text("".join(lines[split]))
        write_jsonl(out / f"{split}.labels.jsonl", labels[split])


def _write_npy(clips, out: Path) -> None:
    index = []
    for n, (split, row, codes) in enumerate(clips):
        file = Path(split) / f"{n:06d}.npy"  # numbered: a clip id may hold any character
        (out / split).mkdir(parents=True, exist_ok=True)
        np.save(out / file, codes)
        index.append({"id": row["id"], "label": row.get("label"), "split": split, "file": file.as_posix()})
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "index.jsonl", index)


def _write_hf(clips, out: Path) -> None:
    from tokenlm.data.hf_datasets import require_datasets

    datasets = require_datasets()
    columns = {split: {"id": [], "label": [], "split": [], "codes": []} for split in SPLITS}
    for split, row, codes in clips:
        for name, value in (("id", row["id"]), ("label", row.get("label")), ("split", HF_SPLITS[split]),
                            ("codes", codes)):
            columns[split][name].append(value)
    features = datasets.Features({"id": datasets.Value("string"), "label": datasets.Value("string"),
                                  "split": datasets.Value("string"),
                                  "codes": datasets.Sequence(datasets.Value("uint16"))})
    parts = {HF_SPLITS[s]: datasets.Dataset.from_dict(c, features=features) for s, c in columns.items() if c["id"]}
    datasets.DatasetDict(parts).save_to_disk(str(out))


WRITERS = {"units": _write_units, "npy": _write_npy, "hf": _write_hf}


def read_export(out: str | Path, fmt: str) -> dict[str, dict[str, np.ndarray]]:
    """split -> clip id -> codes, read back from an export (what a user of the format sees)."""
    out = Path(out)
    found: dict[str, dict[str, np.ndarray]] = {split: {} for split in SPLITS}
    if fmt == "units":
        for split in SPLITS:
            for line in (out / f"{split}.units").read_text().splitlines():
                clip_id, units = line.rsplit("|", 1)
                found[split][clip_id] = np.array(units.split(), dtype=np.uint16)
    elif fmt == "npy":
        for row in read_jsonl(out / "index.jsonl"):
            found[row["split"]][row["id"]] = np.load(out / row["file"])
    else:
        from tokenlm.data.hf_datasets import require_datasets

        tokenlm_split = {hf: split for split, hf in HF_SPLITS.items()}
        for name, part in require_datasets().load_from_disk(str(out)).items():
            for row in part:
                found[tokenlm_split[name]][row["id"]] = np.asarray(row["codes"], dtype=np.uint16)
    return found
