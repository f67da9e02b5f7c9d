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

Tokens of several codes per patch (``tokenizer.levels`` / ``groups``) are exported as one
unit stream per level, not flattened (a flattened stream would interleave levels that mean
different things): units writes level 1 to {split}.units, as for one level, so a tool that
reads one stream gets the coarse codes, and level l+1 to {split}.level{l}.units; npy saves each
clip as a (patches, levels) array; hf's codes column holds one list of levels per patch.

Each format reads back to exactly the stored codes (``read_export``).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from tokenlm.errors import ArtifactError
from tokenlm.fileio import read_jsonl, write_jsonl
from tokenlm.rundir import SPLITS, RunDir, is_finished, read_tokens_meta
from tokenlm.store import RaggedSplit

FORMATS = ("units", "hf", "npy")
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # HF's split names


def export(run: str | Path | RunDir, fmt: str, codebook_size: int | None = None, out: str | Path | None = None) -> Path:
    """Write the run's codes at K = ``codebook_size`` (default: the run's current K), and each
    encoded task's, to ``out`` in format ``fmt``. Returns ``out``."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    k = codebook_size or run.codebook_size
    out = Path(out) if out else run.root / "export" / fmt / f"k{k}"
    stores = [(out, run.tokens(k))] + [(out / "tasks" / name, run.task(name).tokens(k))
                                        for name in run.task_names() if is_finished(run.task(name).tokens(k))]
    for target, tokens in stores:
        levels = read_tokens_meta(tokens, k).levels  # finished, complete, and of this K
        WRITERS[fmt](_clips(tokens, levels), target)
    return out


def _clips(tokens: Path, levels: int = 1):
    """(split, index row, codes) of every stored clip, split by split: codes (T,), or (T, L)."""
    for split in SPLITS:
        for row, codes in RaggedSplit(tokens, split, "uint16", width=levels):
            yield split, row, np.asarray(codes, dtype=np.uint16)


def _write_units(clips, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = {}  # (split, level) -> lines
    labels = {split: [] for split in SPLITS}
    for split, row, codes in clips:
        if "|" in row["id"] or "\n" in row["id"]:
            raise ArtifactError(f"clip id {row['id']!r} holds '|' or a line break: it cannot be a unit file's name")
        streams = [codes] if codes.ndim == 1 else list(codes.T)  # one stream per level
        for level, stream in enumerate(streams):
            lines.setdefault((split, level), []).append(f"{row['id']}|{' '.join(map(str, stream.tolist()))}\n")
        labels[split].append({"id": row["id"], "label": row.get("label")})
    levels = 1 + max((level for _, level in lines), default=0)
    for split in SPLITS:
        for level in range(levels):
            (out / _units_file(split, level)).write_text("".join(lines.get((split, level), [])))
        write_jsonl(out / f"{split}.labels.jsonl", labels[split])


def _units_file(split: str, level: int) -> str:
    """Level 0's stream is {split}.units (what one level writes); level l's {split}.level{l}.units."""
    return f"{split}.units" if level == 0 else f"{split}.level{level}.units"


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
    from tokenlm.hf_input import require_datasets

    datasets = require_datasets()
    columns = {split: {"id": [], "label": [], "split": [], "codes": []} for split in SPLITS}
    multi = False
    for split, row, codes in clips:
        multi = multi or codes.ndim == 2
        for name, value in (("id", row["id"]), ("label", row.get("label")), ("split", HF_SPLITS[split]),
                            ("codes", codes)):
            columns[split][name].append(value)
    features = datasets.Features({"id": datasets.Value("string"), "label": datasets.Value("string"),
                                  "split": datasets.Value("string"),
                                  "codes": datasets.Sequence(datasets.Sequence(datasets.Value("uint16")) if multi
                                                             else datasets.Value("uint16"))})
    parts = {HF_SPLITS[s]: datasets.Dataset.from_dict(c, features=features) for s, c in columns.items() if c["id"]}
    datasets.DatasetDict(parts).save_to_disk(str(out))


WRITERS = {"units": _write_units, "npy": _write_npy, "hf": _write_hf}


def _read_units(path: Path) -> dict[str, np.ndarray]:
    streams = {}
    for line in path.read_text().splitlines():
        clip_id, units = line.rsplit("|", 1)
        streams[clip_id] = np.array(units.split(), dtype=np.uint16)
    return streams


def read_export(out: str | Path, fmt: str) -> dict[str, dict[str, np.ndarray]]:
    """split -> clip id -> codes, read back from an export (what a user of the format sees)."""
    out = Path(out)
    found: dict[str, dict[str, np.ndarray]] = {split: {} for split in SPLITS}
    if fmt == "units":
        levels = 1
        while (out / _units_file(SPLITS[0], levels)).is_file():
            levels += 1
        for split in SPLITS:
            streams = [_read_units(out / _units_file(split, level)) for level in range(levels)]
            for clip_id, codes in streams[0].items():
                found[split][clip_id] = codes if levels == 1 else np.stack([s[clip_id] for s in streams], axis=1)
    elif fmt == "npy":
        for row in read_jsonl(out / "index.jsonl"):
            found[row["split"]][row["id"]] = np.load(out / row["file"])
    else:
        from tokenlm.hf_input import require_datasets

        tokenlm_split = {hf: split for split, hf in HF_SPLITS.items()}
        for name, part in require_datasets().load_from_disk(str(out)).items():
            for row in part:
                found[tokenlm_split[name]][row["id"]] = np.asarray(row["codes"], dtype=np.uint16)
    return found


@click.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="units: GSLM unit files; hf: a datasets DatasetDict (hf extra); npy: one .npy per clip.")
@click.option("-K", "--codebook-size", type=int, help="Codebook size. [the run's current K]")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder. [RUN/export/FORMAT/kK]")
def command(run, fmt, codebook_size, out):
    """Write RUN's codes (and each task's) as unit files, an HF dataset or .npy files.

    \b
      tokenlm export runs/demo --format units
    """
    target = export(run, fmt, codebook_size, out)
    click.echo(f"codes exported as {fmt}: {target}")
