"""Where everything lives in a run directory, and the typed readers of its metadata.

Every artifact path and file name of a run is spelled here and nowhere else: stages ask a
``RunDir`` for a folder (``run.lm``, ``run.tokens(k)``) and name files with the constants
below (``run.lm / METRICS``). Metadata that several stages read (the features' meta.json,
the tokens' meta.json) has one reader each, which validates it once and returns a typed
record, so a consumer never re-checks a key by hand.

    RUN/
      manifest.jsonl          MANIFEST: one line per input clip (prepare)
      features/               {split}.bin + {split}.index.jsonl (+ .index.npy), meta.json (prepare)
      tokenizer/              config.json, autoencoder.safetensors, metrics.json, current.json
      tokenizer/k{K}/         codebook.npy, config.json, metrics.json (one codebook per K)
      tokens/k{K}/            {split}.bin + {split}.index.jsonl (+ .index.npy), meta.json
      lm/                     config.json, model.safetensors, train_log.csv, metrics.json
      baselines/<name>/       one supervised or self-supervised baseline each (results.json,
                              model.safetensors, folds/fold{N}/; simclr: embeddings.npy)
      tasks/<task>/           a labelled task probed with the run's frozen models: a run folder of
                              its own (features/, tokens/k{K}/, baselines/<supervised>/)
      probe/<task>/           results.json, report.md (one per task)
      probe/                  summary.json, summary.md: tasks x representations
      vocoder/                config.json, wavenet.safetensors, metrics.json, samples/
      generated/              generated audio and codes
      sweep/                  sweep.csv, sweep.json, *.png, report.md
      sweep_k/k{K}/           what the sweep trains per K (lm/, probe/<task>/, vocoder/)
      scale/                  the data-scaling study: scale.csv, scale.json, scale.png, report.md
      scale_h/h{H}/           what it trains per size: a run pretrained on the first H hours
                              (levers/<name>/: other LMs on its codes, lm/ and probe/<task>/)
      report.md, report_files/
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_json, read_jsonl, write_json
from tokenlm.data.clips import SPLITS  # noqa: F401  (re-exported: every split-wise store folder uses them)
from tokenlm.run import lock as runlock
from tokenlm.run.artifacts import CHECKPOINTS, STAGE_FILE, check_outputs  # noqa: F401  (CHECKPOINTS: re-exported)

# Encode-only codes of an unlabelled, unsplit folder (tokenize --tokenizer) are one stream: stored
# as the train split (its stage.json config says "stream": true), exported under STREAM_NAME.
STREAM_SPLIT, STREAM_NAME = "train", "all"

if TYPE_CHECKING:
    import numpy as np

# ---- file names -----------------------------------------------------------------------

MANIFEST = "manifest.jsonl"
META = "meta.json"  # features' and tokens' metadata
CONFIG = "config.json"  # a model's config (tokenizer, codebook, LM, vocoder, baseline)
METRICS = "metrics.json"
RESULTS = "results.json"
REPORT = "report.md"
TRAIN_LOG = "train_log.csv"
CURRENT = "current.json"  # the tokenizer's current codebook size
CODEBOOK = "codebook.npy"
WHITENING = "whitening.npy"  # beside codebook.npy when k-means ran on the whitened bottleneck
AUTOENCODER_WEIGHTS = "autoencoder.safetensors"
MODEL_WEIGHTS = "model.safetensors"  # LM (save_pretrained's name) and CNN baselines
WAVENET_WEIGHTS = "wavenet.safetensors"
MODEL_RESULTS = "model_results.json"  # one trained baseline's scores and history
EMBEDDINGS = "embeddings.npy"  # a self-supervised baseline's vector per clip
EMBEDDINGS_INDEX = "embeddings.jsonl"  # which clip (id, split) each row of EMBEDDINGS is
SAMPLES = "samples"  # audio examples inside a vocoder folder
LAST_CHECKPOINT = "last.json"
BEST_CHECKPOINT = "best.json"
TRAINING = "training"  # the autoencoder's checkpoints and log while it trains
SWEEP_TABLE = "sweep.csv"
SWEEP_JSON = "sweep.json"
SUMMARY = "summary"  # RUN/probe/summary.{json,md}: every task's headline rows
SCALE_TABLE = "scale.csv"
SCALE_JSON = "scale.json"
REPORT_FILES = "report_files"


def figure_file(name: str) -> str:
    """A report figure's file name."""
    return f"{name}.png"


def sample_files(index: int, clip_id: str) -> tuple[str, str]:
    """(original, resynthesis) wav names of one excerpt in a vocoder's SAMPLES folder."""
    stem = f"{index:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', clip_id).strip('_') or 'clip'}"
    return f"{stem}_original.wav", f"{stem}_resynth.wav"


def continuation_file(prompt: str | Path) -> str:
    """The pipeline's example in RUN/generated/: the ``prompt`` clip continued and decoded."""
    return f"{Path(prompt).stem}_continued.wav"


def generated_codes_file(prompt: str | Path | None, seed: int) -> str:
    """``generate-codes``' default output in RUN/generated/."""
    return f"{Path(prompt).stem if prompt else 'unconditional'}-seed{seed}.npy"


def info_file(path: str | Path) -> Path:
    """The JSON record written beside a generated file (codes or audio): same name, .json."""
    return Path(path).with_suffix(".json")


def fold_folder(fold) -> Path:
    """Where a baseline keeps the model trained with official fold ``fold`` as test."""
    return Path("folds") / f"fold{fold}"


def is_finished(directory: str | Path) -> bool:
    """Whether ``directory`` holds a finished stage (its stage.json is written last)."""
    return (Path(directory) / STAGE_FILE).is_file()


# ---- the run directory ----------------------------------------------------------------

class RunDir:
    """One run's folder. Paths only: nothing is created or read until a stage asks."""

    def __init__(self, root: str | Path, lock_root: str | Path | None = None):
        self.root = Path(root)
        # the folder whose lock every stage of this run takes: its own, or for a run nested in
        # another (a task, a sweep's K, a scale point, a lever) the outer run's
        self.lock_root = Path(lock_root) if lock_root is not None else self.root

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def codebook(self, codebook_size: int) -> Path:
        """One codebook per size K, all sharing the run's autoencoder."""
        return codebook_dir(self.tokenizer, codebook_size)

    def codebooks(self) -> list[int]:
        """Every codebook size that has a trained codebook, ascending."""
        return codebook_sizes(self.tokenizer)

    @property
    def tokens_root(self) -> Path:
        return self.root / "tokens"

    def tokens(self, codebook_size: int | None = None) -> Path:
        """The codes of every split for codebook size K (default: the run's current K)."""
        return self.tokens_root / f"k{codebook_size or self.codebook_size}"

    def tokenized_sizes(self) -> list[int]:
        """Every codebook size whose tokens are finished, ascending."""
        return sorted(int(p.name[1:]) for p in self.tokens_root.glob("k*") if is_finished(p))

    @property
    def lm(self) -> Path:
        return self.root / "lm"

    @property
    def vocoder(self) -> Path:
        return self.root / "vocoder"

    @property
    def probe(self) -> Path:
        """Every task's probe (probe/<task>/) and their summary (probe/summary.*)."""
        return self.root / "probe"

    def probe_task(self, task: str) -> Path:
        """One task's probe stage: results.json, report.md."""
        return self.probe / task

    @property
    def tasks_root(self) -> Path:
        return self.root / "tasks"

    def task(self, name: str) -> "RunDir":
        """A labelled task probed with this run's models: a run folder of its own, whose
        ``.features``, ``.tokens(k)`` and ``.baseline(name)`` are the task's."""
        return RunDir(self.tasks_root / name, self.lock_root)

    def task_names(self) -> list[str]:
        """Tasks with finished features in this run, by name."""
        return sorted(p.name for p in self.tasks_root.glob("*") if is_finished(p / "features"))

    def baseline(self, name: str) -> Path:
        return self.root / "baselines" / name

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    def sweep_k(self, codebook_size: int) -> "RunDir":
        """Where the sweep keeps what it trains for one K: a run folder of its own, whose
        ``.lm``, ``.probe`` and ``.vocoder`` are that K's models. Outside RUN/sweep, so
        rebuilding the sweep's summary never discards them."""
        return RunDir(self.root / "sweep_k" / f"k{codebook_size}", self.lock_root)

    def lever(self, name: str) -> "RunDir":
        """Another code LM of this run (its ``.lm``, ``.probe_task``): one lever of the scale study."""
        return RunDir(self.root / "levers" / name, self.lock_root)

    @property
    def scale(self) -> Path:
        """The data-scaling study's summary (scale.csv, scale.json, figures, report.md)."""
        return self.root / "scale"

    def scale_point(self, hours: float) -> "RunDir":
        """The run whose self-supervised stages saw only the first ``hours`` of the corpus.
        Outside RUN/scale, so rebuilding the study's summary never discards it."""
        return RunDir(self.root / "scale_h" / f"h{hours:g}", self.lock_root)

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def input_hashes(self) -> Path:
        """Input files' sha256 pinned when only their ctime or inode changed: {path: {size, mtime_ns, sha256}}."""
        return self.root / "input_hashes.json"

    @property
    def saved_recipe(self) -> Path:
        """The recipe as `tokenlm run` ran it (overrides applied): `tokenlm run` it to reproduce the run."""
        return self.root / "recipe.yaml"

    @property
    def rawlm(self) -> Path:
        """Next-sample prediction on the raw audio (`tokenlm rawlm`)."""
        return self.root / "rawlm"

    def export(self, fmt: str, codebook_size: int) -> Path:
        """Where `tokenlm export` writes the codes at K in format ``fmt`` when no --out is given."""
        return self.root / "export" / fmt / f"k{codebook_size}"

    @property
    def corpus_subset(self) -> Path:
        """A scale point's pretraining corpus: a manifest of the first hours of the study's corpus."""
        return self.root / "corpus.jsonl"

    @property
    def report_files(self) -> Path:
        return self.root / REPORT_FILES

    # -- the current codebook size --------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        """The K that ``tokenlm tokenize`` was last asked for: every consumer's default."""
        if not self.root.is_dir():
            raise ArtifactError(f"{self.root}: no such run folder (make one: `tokenlm tokenize {self.root} --data DIR`)")
        if not self.codebooks() and not (self.tokenizer / CURRENT).is_file():
            raise ArtifactError(f"{self.root} has no tokenizer yet: run `tokenlm tokenize {self.root}` first")
        return current_codebook_size(self.tokenizer)

    def codebook_size_or_none(self) -> int | None:
        try:
            return self.codebook_size
        except ArtifactError:
            return None

    def set_codebook_size(self, codebook_size: int) -> None:
        with runlock.holding(self.lock_root):  # a publication: one writer at a time
            write_json(self.tokenizer / CURRENT, {"codebook_size": int(codebook_size)})


# ---- inside a tokenizer folder (RUN/tokenizer, or one copied anywhere) -----------------

def codebook_dir(tokenizer_dir: str | Path, codebook_size: int) -> Path:
    return Path(tokenizer_dir) / f"k{codebook_size}"


def codebook_sizes(tokenizer_dir: str | Path) -> list[int]:
    """Every K with a trained codebook in a tokenizer folder, ascending."""
    return sorted(int(p.name[1:]) for p in Path(tokenizer_dir).glob("k*") if (p / CODEBOOK).is_file())


def current_codebook_size(tokenizer_dir: str | Path) -> int:
    """The tokenizer's current K (current.json); with no record, its only codebook."""
    path = Path(tokenizer_dir) / CURRENT
    if path.is_file():
        return int(read_json(path)["codebook_size"])
    sizes = codebook_sizes(tokenizer_dir)
    if len(sizes) == 1:
        return sizes[0]
    raise ArtifactError(f"{tokenizer_dir}: cannot tell which codebook to use (found {sizes}); pass a codebook size")


def as_run(run: str | Path | RunDir) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(run)


# ---- typed metadata -------------------------------------------------------------------

def read_run_manifest(run: "RunDir") -> list[dict]:
    """The run's clips, one row each, as the finished features saw them: the features' own
    manifest (RUN/manifest.jsonl is only a copy for people, and may belong to a prepare that
    failed or is still running). A run of new data encoded with ``tokenize --tokenizer`` has
    no features, only RUN/manifest.jsonl."""
    if is_finished(run.features):
        return read_jsonl(run.features / MANIFEST)
    if run.manifest.is_file():
        return read_jsonl(run.manifest)
    raise ArtifactError(f"{run.root} has no features yet: run `tokenlm prepare` first")


@dataclass(frozen=True)
class FeatureMeta:
    """RUN/features/meta.json: the log-mel settings and the train split's normalisation."""

    config: Any  # FeatureConfig
    norm_mean: np.ndarray  # (n_mels,) float32
    norm_std: np.ndarray  # (n_mels,) float32
    raw: dict


def read_feature_meta(directory: str | Path) -> FeatureMeta:
    """The features' meta.json, checked: a FeatureConfig, and normalisation of n_mels values."""
    # Imported here, not at the top: `tokenlm --help` reads the registry, which needs this
    # module but neither numpy nor torch.
    import numpy as np

    from tokenlm.data.features import FeatureConfig

    path = Path(directory) / META
    check_outputs(directory)  # every file there at the size prepare left it
    meta = read_json(path)
    try:
        config = FeatureConfig(**{k: meta[k] for k in FeatureConfig.__dataclass_fields__ if k in meta})
        mean = np.asarray(meta["norm"]["mean"], dtype=np.float32)
        std = np.asarray(meta["norm"]["std"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: not a features record ({err})") from None
    if mean.shape != (config.n_mels,) or std.shape != (config.n_mels,):
        raise ArtifactError(f"{path}: normalisation has {mean.shape} values for {config.n_mels} mel bins")
    return FeatureMeta(config, mean, std, meta)


@dataclass(frozen=True)
class TokensMeta:
    """RUN/tokens/k{K}/meta.json: what the codes are and where they came from."""

    directory: Path
    codebook_size: int
    code_rate: float | None
    sample_rate: int | None
    samples_per_code: int | None
    raw: dict
    levels: int = 1  # codes per patch (tokenlm.tokenizer.quantizers): the bins are (codes, levels) when > 1

    def require_single_level(self, what: str) -> "TokensMeta":
        """Fail in one line when ``what`` reads one code per patch and these tokens have more."""
        if self.levels > 1:
            raise ConfigError(f"{what} reads one code per patch, but {self.directory} holds {self.levels} "
                              f"({self.raw.get('quantizer', 'residual')} codes, tokenizer.levels/groups): "
                              "use a one-level tokenizer for it")
        return self

    def require(self, *keys: str) -> "TokensMeta":
        """Fail in one line when a consumer needs a field that this record lacks."""
        for key in keys:
            if getattr(self, key) is None:
                raise ArtifactError(f"{self.directory / META} has no {key}")
        return self


def read_tokens_meta(directory: str | Path, codebook_size: int | None = None) -> TokensMeta:
    """A finished tokens folder's meta.json, checked against the K asked for (if any)."""
    directory = Path(directory)
    if not is_finished(directory):
        raise ArtifactError(f"{directory} is missing or incomplete: run `tokenlm tokenize` first")
    check_outputs(directory)  # every file there at the size tokenize left it
    meta = read_json(directory / META)
    # Runs written before the vocabulary was unified call K "vocab_size".
    size = meta.get("codebook_size", meta.get("vocab_size"))
    if size is None:
        raise ArtifactError(f"{directory / META} has no codebook_size")
    size = int(size)
    if codebook_size is not None and size != codebook_size:
        raise ArtifactError(f"{directory / META} says codebook_size {size}, but K={codebook_size} was asked for")
    if meta.get("dtype", "uint16") != "uint16":
        raise ArtifactError(f"{directory}: codes stored as {meta['dtype']}, expected uint16")
    optional = {"code_rate": float, "sample_rate": int, "samples_per_code": int}
    values = {k: (cast(meta[k]) if meta.get(k) is not None else None) for k, cast in optional.items()}
    levels = meta.get("levels", 1)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ArtifactError(f"{directory / META}: levels must be an integer >= 1, got {levels!r}")
    return TokensMeta(directory, size, raw=meta, levels=levels, **values)
