"""``tokenlm publish RUN --out DIR``: a finished run's tokenizer (one K), LM and vocoder as one
self-contained folder with a model card (tokenlm.pipeline.pretrained), loadable without the run.

    tokenlm publish runs/demo --out models/tokenlm-demo
    tokenlm publish runs/demo --out models/tokenlm-demo-k512 -K 512 --hub-id me/tokenlm-demo

The folder is written beside DIR under a temporary name and renamed into place, so DIR is
either the old folder or the new one, never half of one. An existing DIR is replaced only when
tokenlm wrote it (its tokenlm.json says so) or it is empty; anything else is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import fsync_dir
from tokenlm.pipeline.pretrained import PretrainedModel
from tokenlm.tokenizer.published import is_pretrained_folder


def publish(run: str | Path, out: str | Path, codebook_size: int | None = None, hub_id: str | None = None) -> Path:
    """Write RUN's pretrained folder to ``out`` (atomically; module docstring); with ``hub_id``
    also upload it to the Hugging Face Hub. Returns ``out``."""
    out = Path(out).expanduser().absolute()
    _check_replaceable(out)
    model = PretrainedModel.from_run(run, codebook_size, device="cpu")
    work = out.parent / f".{out.name}.partial-publish"
    if work.exists():
        shutil.rmtree(work)  # our own leftover of an interrupted publish (the name is ours)
    try:
        model.save_pretrained(work)
        _swap_in(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    if hub_id:
        click.echo(f"uploaded: {model.push_to_hub(out, hub_id)}", err=True)
    return out


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if out.is_symlink() or not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder tokenlm wrote: choose another --out")
    if any(out.iterdir()) and not is_pretrained_folder(out):
        raise ArtifactError(f"{out} exists and is not a folder tokenlm publish wrote: choose another --out "
                            f"(tokenlm never replaces a folder it did not make)")


def _swap_in(work: Path, out: Path) -> None:
    """``work`` becomes ``out``; an earlier ``out`` (ours, checked) is removed after the rename."""
    old = out.parent / f".{out.name}.replaced"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old)
