"""A finished run's models as one shareable folder: save_pretrained / from_pretrained.

    model = PretrainedModel.from_run("runs/demo")          # tokenizer (current K), LM, vocoder
    model.save_pretrained("models/tokenlm-demo")             # or: tokenlm publish runs/demo --out DIR
    model = PretrainedModel.from_pretrained("models/tokenlm-demo")   # or a Hugging Face Hub id
    codes = model.tokenizer.encode(wav, sr)
    audio = model.decode_audio(codes)                        # the vocoder when there is one

The folder, loadable without the run (weights safetensors, everything else JSON; no pickles):

    tokenlm.json               format, K, what is inside, the tokenizer's hash, every file's size + sha256
    README.md                  the model card (tokenlm.model_card): data, recipe, scores, versions
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
from safetensors.torch import load_file, save_file

from tokenlm.errors import ArtifactError, ConfigError
from tokenlm.fileio import read_json, sha256_file, write_json, write_text
from tokenlm.lm import CodeLM
from tokenlm.rundir import CONFIG, RunDir, as_run, is_finished
from tokenlm.tokenizer import AudioTokenizer, load_patch_coder, save_patch_coder
from tokenlm.vocoder import Vocoder

FORMAT = "tokenlm-pretrained"
FORMAT_VERSION = 1
MANIFEST = "tokenlm.json"
CARD = "README.md"
RECIPE = "recipe.yaml"
CODEBOOK_WEIGHTS = "codebook.safetensors"  # {"centroids": (K, bottleneck) float32}
PARTS = ("tokenizer", "lm", "vocoder")


class PretrainedModel:
    """A tokenizer at one K, with the code LM and the vocoder trained on its codes (either may be None)."""

    def __init__(self, tokenizer: AudioTokenizer, lm: CodeLM | None = None, vocoder: Vocoder | None = None,
                 card: dict | None = None, source: str | None = None):
        self.tokenizer, self.lm, self.vocoder = tokenizer, lm, vocoder
        self.card = dict(card or {})  # what the model card says (tokenlm.model_card.card_facts)
        self.source = source

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    def decode_audio(self, codes, *, seed: int = 0) -> np.ndarray:
        """Codes -> audio through the vocoder, else Griffin-Lim (AudioTokenizer.decode_audio)."""
        if self.vocoder is None:
            self.tokenizer.info.pop("tokenizer_dir", None)  # no run to look for a vocoder in
        return self.tokenizer.decode_audio(codes, vocoder=self.vocoder, seed=seed)

    # -- from a run ------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path | RunDir, codebook_size: int | None = None, device=None) -> "PretrainedModel":
        """A finished run's tokenizer at ``codebook_size`` (default: the current K), with its
        LM and vocoder when they were trained on that tokenizer's codes."""
        from tokenlm.model_card import card_facts

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
        from tokenlm.model_card import render_card

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
            from tokenlm.vocoder import save_vocoder

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
            directory = _download(str(name_or_path), revision)
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
        hub = _hub()
        api = hub.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id)
        return f"https://huggingface.co/{repo_id}"


def load_pretrained_tokenizer(path: Path, codebook_size: int | None = None, device=None) -> AudioTokenizer:
    """The tokenizer of a pretrained folder (``path`` the folder or its tokenizer/), for
    ``AudioTokenizer.load`` and ``tokenize --tokenizer``: its files checked, the LM and vocoder
    not loaded."""
    directory = path.parent if (path / CODEBOOK_WEIGHTS).is_file() else path
    manifest = check_folder(directory)
    if codebook_size is not None and codebook_size != manifest["codebook_size"]:
        raise ArtifactError(f"{directory} holds the codebook of K={manifest['codebook_size']}, not K={codebook_size}")
    coder = load_patch_coder(directory / "tokenizer")
    centroids = _centroids(directory / "tokenizer" / CODEBOOK_WEIGHTS, coder.autoencoder.encoder[-1].out_features)
    tokenizer = AudioTokenizer(coder, centroids, {"tokenizer_hash": manifest.get("tokenizer_hash"),
                                                  "pretrained_dir": str(directory.resolve())})
    return tokenizer.to(device) if device is not None else tokenizer


def check_folder(directory: Path) -> dict:
    """tokenlm.json of a pretrained folder, with every file it lists there at its size and hash."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a tokenlm pretrained folder (no {MANIFEST}; write one with "
                            f"`tokenlm publish RUN --out DIR`)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a tokenlm pretrained folder")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest['format_version']} is newer than this tokenlm "
                            f"reads ({FORMAT_VERSION}): upgrade tokenlm")
    for name, record in manifest.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing from the pretrained folder")
        if file.stat().st_size != record["size"] or sha256_file(file) != record["sha256"]:
            raise ArtifactError(f"{file} is not the file the folder was saved with (size or hash differs)")
    return manifest


def is_pretrained_folder(directory: Path) -> bool:
    try:
        return read_json(directory / MANIFEST).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, ArtifactError):
        return False


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


def _centroids(path: Path, bottleneck: int) -> np.ndarray:
    try:
        centroids = load_file(str(path))["centroids"].numpy()
    except Exception as err:  # truncated file, missing tensor
        if isinstance(err, MemoryError):
            raise
        raise ArtifactError(f"{path}: not a readable codebook ({str(err).splitlines()[0]})") from None
    if centroids.ndim != 2 or centroids.shape[1] != bottleneck or not np.isfinite(centroids).all():
        raise ArtifactError(f"{path}: centroids of shape {centroids.shape} do not fit a {bottleneck}-d bottleneck")
    return centroids


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("loading from or pushing to the Hugging Face Hub needs huggingface_hub: "
                          "pip install huggingface_hub") from None
    return huggingface_hub


def _download(repo_id: str, revision: str | None) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise ArtifactError(f"{repo_id}: no such folder (and not a Hub id owner/name)")
    try:
        return Path(_hub().snapshot_download(repo_id, revision=revision))
    except ConfigError:
        raise
    except Exception as err:  # offline, unknown repo, no access: one line
        raise ArtifactError(f"{repo_id}: cannot download from the Hub ({str(err).splitlines()[0]})") from None
