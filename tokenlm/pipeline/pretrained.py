"""A finished run's models as one shareable folder: save_pretrained / from_pretrained.

    model = PretrainedModel.from_run("runs/demo")          # tokenizer (current K), LM, vocoder
    model.save_pretrained("models/tokenlm-demo")             # or: tokenlm publish runs/demo --out DIR
    model = PretrainedModel.from_pretrained("models/tokenlm-demo")   # or a Hugging Face Hub id
    codes = model.tokenizer.encode(wav, sr)
    audio = model.decode_audio(codes)                        # the vocoder when there is one

The folder, loadable without the run (weights safetensors, everything else JSON; no pickles):

    tokenlm.json               format, K, what is inside, the tokenizer's hash, every file's size + sha256
    README.md                  the model card (tokenlm.reporting.model_card): data, recipe, scores, versions
    recipe.yaml                the recipe the run was made with (when it was made by `tokenlm run`)
    tokenizer/                 config.json + autoencoder.safetensors (as RUN/tokenizer) + codebook.safetensors
    lm/                        config.json + model.safetensors (GPT2LMHeadModel.from_pretrained reads it)
    vocoder/                   config.json + wavenet.safetensors

The LM and the vocoder are included when the run has them trained on the exported K's codes.
``from_pretrained`` checks every file against tokenlm.json before loading; a hub id (``owner/name``,
not a local folder) is downloaded with ``huggingface_hub`` (untested online here: this project
runs offline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_json, sha256_file, write_json, write_text
from tokenlm.lm.code_lm import CodeLM
from tokenlm.run.rundir import CONFIG, RunDir, as_run, is_finished
from tokenlm.tokenizer.published import (
    CODEBOOK_WEIGHTS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    check_folder,
    download,
    hub,
    load_pretrained_tokenizer,
)
from tokenlm.tokenizer.tokenizer import AudioTokenizer, save_patch_coder
from tokenlm.vocoder.decode import decode_audio
from tokenlm.vocoder.vocoder import Vocoder

CARD = "README.md"
RECIPE = "recipe.yaml"
PARTS = ("tokenizer", "lm", "vocoder")


class PretrainedModel:
    """A tokenizer at one K, with the code LM and the vocoder trained on its codes (either may be None)."""

    def __init__(self, tokenizer: AudioTokenizer, lm: CodeLM | None = None, vocoder: Vocoder | None = None,
                 card: dict | None = None, source: str | None = None):
        self.tokenizer, self.lm, self.vocoder = tokenizer, lm, vocoder
        self.card = dict(card or {})  # what the model card says (tokenlm.reporting.model_card.card_facts)
        self.source = source

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    def decode_audio(self, codes, *, seed: int = 0) -> np.ndarray:
        """Codes -> audio through the vocoder, else Griffin-Lim (tokenlm.vocoder.decode.decode_audio)."""
        if self.vocoder is None:
            self.tokenizer.info.pop("tokenizer_dir", None)  # no run to look for a vocoder in
        return decode_audio(self.tokenizer, codes, vocoder=self.vocoder, seed=seed)

    # -- from a run ------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path | RunDir, codebook_size: int | None = None, device=None) -> "PretrainedModel":
        """A finished run's tokenizer at ``codebook_size`` (default: the current K), with its
        LM and vocoder when they were trained on that tokenizer's codes."""
        from tokenlm.reporting.model_card import card_facts

        run = as_run(run)
        if not run.root.is_dir():
            raise ArtifactError(f"{run.root}: no such run folder")
        tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=codebook_size, device=device)
        lm = _same_codes(run.lm, tokenizer, lambda d: CodeLM.load(d, device=device), _lm_hash)
        vocoder = _same_codes(run.vocoder, tokenizer, lambda d: Vocoder.load(d, device=device), lambda v: v.tokenizer_hash)
        return cls(tokenizer, lm, vocoder, card_facts(run, tokenizer, lm, vocoder), source=str(run.root))

    # -- the folder ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the folder (module docstring) into ``directory``, which must be new or empty;
        ``tokenlm publish`` writes it atomically and replaces only its own earlier folders."""
        from tokenlm.reporting.model_card import render_card

        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ArtifactError(f"{directory} exists and is not empty: save into a new folder")
        for part in PARTS:
            (directory / part).mkdir(parents=True, exist_ok=True)
        save_patch_coder(self.tokenizer.coder, directory / "tokenizer")
        save_file({"centroids": torch.from_numpy(self.tokenizer.centroids)}, str(directory / "tokenizer" / CODEBOOK_WEIGHTS))
        if self.lm is not None:
            config, info = self.lm.model.config, self.lm.model.config.tokenlm
            config.tokenlm = {**info, "tokenizer_dir": None}  # no path into the run
            try:
                self.lm.model.cpu().save_pretrained(directory / "lm")
            finally:
                config.tokenlm = info
                self.lm.model.to(self.lm.device)
        else:
            (directory / "lm").rmdir()
        if self.vocoder is not None:
            from tokenlm.vocoder.vocoder import save_vocoder

            save_vocoder(self.vocoder.model, directory / "vocoder", self.vocoder.info)
            self.vocoder.model.to(self.vocoder.device)
        else:
            (directory / "vocoder").rmdir()
        if self.card.get("recipe_text"):
            write_text(directory / RECIPE, self.card["recipe_text"])
        write_text(directory / CARD, render_card(self.card, self))
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        for file in files:  # a folder to share: readable by others (atomic writes make 0600 temp files)
            file.chmod(0o644)
        write_json(directory / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "codebook_size": self.codebook_size,
            "tokenizer_hash": self.tokenizer.info.get("tokenizer_hash"),
            "parts": [p for p in PARTS if (directory / p).is_dir()],
            "files": {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                      for p in files},
        })
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device=None, revision: str | None = None,
                        parts: tuple[str, ...] = PARTS) -> "PretrainedModel":
        """Load a folder written by ``save_pretrained`` (or ``tokenlm publish``), or download one
        from the Hugging Face Hub by id (``owner/name``; needs huggingface_hub); ``parts`` limits
        what is loaded (the tokenizer always is)."""
        directory = Path(name_or_path).expanduser()
        if not directory.exists():
            directory = download(str(name_or_path), revision)
        tokenizer = load_pretrained_tokenizer(directory, device=device)
        manifest = read_json(directory / MANIFEST)
        lm = CodeLM.load(directory / "lm", device=device) if "lm" in manifest["parts"] and "lm" in parts else None
        vocoder = (Vocoder.load(directory / "vocoder", device=device)
                   if "vocoder" in manifest["parts"] and "vocoder" in parts else None)
        for part in (p for p in (lm, vocoder) if p is not None):
            if part.codebook_size != tokenizer.codebook_size:
                raise ArtifactError(f"{directory}: a part was trained on K={part.codebook_size} codes, the "
                                    f"tokenizer makes K={tokenizer.codebook_size}")
        if vocoder is not None:
            vocoder.check_tokenizer(tokenizer)
        return cls(tokenizer, lm, vocoder, {}, source=str(directory))

    def push_to_hub(self, directory: str | Path, repo_id: str, private: bool = True) -> str:
        """Upload a saved folder to the Hub (huggingface_hub; untested online here)."""
        check_folder(Path(directory))
        api = hub().HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id)
        return f"https://huggingface.co/{repo_id}"


def _same_codes(folder: Path, tokenizer: AudioTokenizer, load, hash_of):
    """The model in ``folder`` when it is finished and trained on ``tokenizer``'s codes, else None."""
    if not is_finished(folder) or not (folder / CONFIG).is_file():
        return None
    model = load(folder)
    expected = tokenizer.info.get("tokenizer_hash")
    if model.codebook_size != tokenizer.codebook_size or (hash_of(model) and expected and hash_of(model) != expected):
        return None
    return model


def _lm_hash(lm: CodeLM):
    return lm.info.get("tokenizer_hash")


