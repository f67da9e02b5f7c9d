"""Stage 5: linear probes of every representation of a run, beside the CNN baselines.

    tokenlm probe RUN [--baselines vgg,simclr,timbre] [--layers all|N,...]

Every labelled clip of RUN/features is turned into one vector per representation, and the
same linear probe (``tokenlm.linear_probe``: standardise, multinomial logistic regression,
C chosen on val, test scored once) reads the label out of it. Rows:

- ``logmel_stats``: mean + std of each mel bin over time, the floor every learned
  representation must beat;
- ``bag_of_codes``: the normalised histogram of a clip's codes (RUN/tokens/k{K});
- ``autoencoder``: the tokenizer's un-quantised bottleneck, mean + std pooled;
- ``lm_layer_<i>``: the code LM's hidden states, mean-pooled over time, per layer (0 is the
  embedding output), and ``lm_best``: the layer with the best val accuracy;
- baselines, each its own cached stage under RUN/baselines/<name>/: ``vgg`` and ``timbre``
  (supervised end to end: their own classifier's accuracy), ``simclr`` (self-supervised trunk,
  then the same linear probe as every row).

Datasets with official folds (ESC-50, UrbanSound8K) are also scored by cross-validation over
folds (mean ± std); otherwise the train/val/test split is the whole story.

Writes RUN/probe/results.json and RUN/probe/report.md. A row whose artifacts are missing
(no tokenizer yet, no LM yet) is recorded as skipped with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import click
import numpy as np

from tokenlm.artifacts import (
    Stage,
    features_dir,
    read_json,
    read_jsonl,
    stage_key,
    tokenizer_dir,
    write_json,
    write_jsonl,
)
from tokenlm.config import build, recipe_section, to_dict
from tokenlm.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.linear_probe import DEFAULT_CS, cross_validate_folds, fit_linear_probe, fold_assignments, summarise_folds
from tokenlm.store import RaggedSplit

SPLITS = ("train", "val", "test")
BASELINES = ("vgg", "simclr", "timbre")
SUPERVISED = "supervised end-to-end"
MODEL_RESULTS = "model_results.json"  # one trained CNN's scores and history, beside its weights
LINEAR = "linear probe"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ProbeConfig:
    """The ``probe:`` recipe section."""

    baselines: tuple[str, ...] = ()  # any of vgg, simclr, timbre
    layers: str = "all"  # LM layers to probe: "all" or "0,2,4" (0 = embedding output)
    codebook_size: int | None = None  # codes to probe (bag of codes, LM); None: the run's current K
    cs: tuple[float, ...] = DEFAULT_CS  # inverse L2 strengths tried on val
    max_iter: int = 2000  # lbfgs iterations per fit
    seed: int = 0
    folds: bool = True  # also cross-validate over official folds when the dataset has them
    lm_batch_clips: int = 16  # clips per LM forward pass
    # -- CNN baselines (vgg, timbre; simclr shares the trunk and crop length) --
    crop_seconds: float = 1.0  # random training crops; evaluation averages whole-clip windows
    batch_size: int = 32
    epochs: int = 60  # upper bound; early stopping on val accuracy
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    baseline_folds: bool = True  # supervised baselines: also train one model per official fold
    vgg_channels: tuple[int, ...] = (32, 64, 128, 256)
    vgg_convs_per_block: int = 2
    timbre_heights: tuple[float, ...] = (0.9, 0.5, 0.2)  # fractions of the mel axis
    timbre_widths: tuple[int, ...] = (1, 3)  # frames
    timbre_filters: int = 32
    simclr_epochs: int = 50
    simclr_batch_size: int = 64
    simclr_temperature: float = 0.1
    simclr_projection_dim: int = 128

    def __post_init__(self):
        given = self.baselines.split(",") if isinstance(self.baselines, str) else self.baselines
        names = tuple(b.strip().lower() for b in given if b.strip() and b.strip().lower() != "none")
        unknown = sorted(set(names) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)} (known: {', '.join(BASELINES)})")
        object.__setattr__(self, "baselines", tuple(dict.fromkeys(names)))
        object.__setattr__(self, "layers", _layers_text(self.layers))
        if not self.cs or min(self.cs) <= 0:
            raise ValueError("cs must be a non-empty list of positive numbers")
        if self.crop_seconds <= 0:
            raise ValueError("crop_seconds must be positive")


def _layers_text(value) -> str:
    """Normalise ``layers`` (a string, an int, or a YAML list) to "all" or "0,2,4"."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "all"):
        return "all"
    try:
        numbers = [int(v) for v in text.split(",") if v]
    except ValueError:
        numbers = []
    if not numbers:
        raise ValueError(f"layers takes 'all' or a comma list of layer numbers, got {value!r}")
    if min(numbers) < 0:
        raise ValueError("layer numbers start at 0 (the embedding output)")
    return ",".join(str(n) for n in sorted(set(numbers)))


def parse_layers(spec: str, n_states: int) -> list[int]:
    """Layer numbers to probe out of ``n_states`` (= LM layers + 1)."""
    if spec == "all":
        return list(range(n_states))
    layers = [int(v) for v in spec.split(",")]
    too_deep = [n for n in layers if n >= n_states]
    if too_deep:
        raise ConfigError(f"layers {too_deep} asked for, but the LM has layers 0..{n_states - 1}")
    return layers


# --------------------------------------------------------------------------- clips


class LabelledClips:
    """Every labelled clip of a run's features, in split order, with its split/label/fold.

    Raises ArtifactError if a clip id is in two splits, or if the manifest puts a clip in a
    different split than the features do: a probe over mixed splits would be meaningless.
    """

    def __init__(self, run: str | Path):
        self.run = Path(run)
        self.features_dir = features_dir(run)
        self.meta = read_json(self.features_dir / "meta.json")
        self.n_mels = int(self.meta["n_mels"])
        self.frame_rate = float(self.meta["sample_rate"]) / float(self.meta["hop_length"])
        self.norm_mean = np.asarray(self.meta["norm"]["mean"], dtype=np.float32)  # (M,)
        self.norm_std = np.asarray(self.meta["norm"]["std"], dtype=np.float32)  # (M,)
        self._stores: dict[str, RaggedSplit] = {}
        refs, ids, splits, labels, folds = [], [], [], [], []
        for split in SPLITS:
            if not (self.features_dir / f"{split}.index.jsonl").is_file():
                continue
            store = RaggedSplit(self.features_dir, split, "float16", width=self.n_mels)
            self._stores[split] = store
            for i, row in enumerate(store.rows):
                if row.get("label") is None:
                    continue  # unlabelled clips cannot be probed
                refs.append((split, i))
                ids.append(str(row["id"]))
                splits.append(split)
                labels.append(str(row["label"]))
                folds.append(row.get("fold"))
        self._refs = refs
        self.ids = ids
        self.splits = np.array(splits)
        self.labels = np.array(labels)
        self._check_disjoint()
        self.folds = self._folds(folds)
        self.classes = sorted(set(labels))
        if not ids:
            raise ArtifactError(f"{self.features_dir} has no labelled clip: nothing to probe")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, split: str) -> np.ndarray:
        """Positions of the clips of ``split``."""
        return np.flatnonzero(self.splits == split)

    def logmel(self, i: int) -> np.ndarray:
        """Clip i's log-mel in dB, (T, M) float16 (a memmap view)."""
        split, row = self._refs[i]
        return self._stores[split][row]

    @cached_property
    def normalised(self) -> list[np.ndarray]:
        """Every clip's log-mel normalised with the train statistics, (T, M) float16 each."""
        return [((self.logmel(i).astype(np.float32) - self.norm_mean) / self.norm_std).astype(np.float16)
                for i in range(len(self))]

    @property
    def has_folds(self) -> bool:
        return self.folds is not None

    def xy(self, vectors: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of one split out of per-clip ``vectors`` (N, D)."""
        idx = self.index(split)
        return vectors[idx], self.labels[idx]

    def summary(self) -> dict:
        counts = {s: int((self.splits == s).sum()) for s in SPLITS}
        test = self.labels[self.index("test")]
        majority = max((np.mean(test == c) for c in self.classes), default=0.0) if len(test) else None
        return {
            "clips": counts,
            "classes": self.classes,
            "folds": sorted(set(self.folds.tolist())) if self.has_folds else None,
            "majority_class_test_accuracy": None if majority is None else float(majority),
        }

    def _check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for clip_id, split in zip(self.ids, self.splits):
            if seen.setdefault(clip_id, split) != split:
                raise ArtifactError(f"clip {clip_id} is in both the {seen[clip_id]} and the {split} split of "
                                    f"{self.features_dir}: rebuild the features (`tokenlm prepare`)")
        manifest = self.run / "manifest.jsonl"
        if manifest.is_file():
            for row in read_jsonl(manifest):
                split = seen.get(str(row.get("id")))
                if split is not None and row.get("split") not in (None, split):
                    raise ArtifactError(f"clip {row['id']} is in the {row['split']} split of {manifest} but in "
                                        f"{split} in {self.features_dir}: the features are out of date")

    def _folds(self, folds: list):
        """Official folds, when every clip has one (from the features index or the manifest)."""
        if any(f is None for f in folds):
            manifest = self.run / "manifest.jsonl"
            by_id = {str(r["id"]): r.get("fold") for r in read_jsonl(manifest)} if manifest.is_file() else {}
            folds = [f if f is not None else by_id.get(i) for f, i in zip(folds, self.ids)]
        if not folds or any(f is None for f in folds) or len(set(folds)) < 3:
            return None
        return np.array(folds)


# --------------------------------------------------------------------------- representations


class Unavailable(Exception):
    """A representation cannot be built on this run (yet); the message says why."""


@dataclass
class Representation:
    """One vector per clip, aligned with ``LabelledClips``, plus what it cost."""

    name: str
    title: str
    vectors: np.ndarray  # (N, D)
    encoder_params: int | None = None
    encoder_train_s: float | None = None
    flops_per_second: float | None = None
    extract_s: float = 0.0
    notes: str = ""


def logmel_stats(clips: LabelledClips, progress: bool = True) -> Representation:
    """Mean and std of each mel bin over the clip's frames: (N, 2 * n_mels)."""
    start = time.perf_counter()
    bar = _bar(range(len(clips)), "log-mel", progress)
    vectors = np.stack([_mean_std(clips.logmel(i).astype(np.float32)) for i in bar])  # (N, 2 M)
    return Representation("logmel_stats", "log-mel statistics (mean+std per bin)", vectors, encoder_params=0,
                          encoder_train_s=0.0, extract_s=time.perf_counter() - start)


def bag_of_codes(clips: LabelledClips, codes: dict[str, np.ndarray], vocab_size: int,
                 tokenizer_info: dict) -> Representation:
    """Normalised histogram of each clip's codes: (N, K)."""
    start = time.perf_counter()
    vectors = np.zeros((len(clips), vocab_size), dtype=np.float32)
    for i, clip_id in enumerate(clips.ids):
        counts = np.bincount(codes[clip_id].astype(np.int64), minlength=vocab_size)[:vocab_size]
        vectors[i] = counts / max(counts.sum(), 1)
    params = tokenizer_info.get("encoder_params")
    return Representation("bag_of_codes", f"bag of codes (K={vocab_size})", vectors,
                          encoder_params=None if params is None else params + tokenizer_info.get("codebook_params", 0),
                          encoder_train_s=tokenizer_info.get("train_s"), extract_s=time.perf_counter() - start,
                          notes="encoder = autoencoder encoder + codebook")


def autoencoder_bottleneck(clips: LabelledClips, run: Path, codebook_size: int | None, device,
                           progress: bool = True) -> Representation:
    """The tokenizer's un-quantised bottleneck per patch, mean + std pooled: (N, 2 d)."""
    import torch

    # Any codebook will do (the bottleneck comes before quantisation), but loading needs one.
    tokenizer = _load_tokenizer(run, codebook_size, device)
    _check_same_features(tokenizer, clips)
    start = time.perf_counter()
    vectors = []
    for i in _bar(range(len(clips)), "autoencoder", progress):
        frames = torch.from_numpy(clips.logmel(i).astype(np.float32))  # (T, M) dB
        z = tokenizer.embed_frames(frames.to(device))  # (N, d)
        vectors.append(_mean_std(z.float().cpu().numpy()))
    info = _tokenizer_info(run, tokenizer)
    return Representation("autoencoder", "autoencoder bottleneck (mean+std)", np.stack(vectors),
                          encoder_params=info["encoder_params"], encoder_train_s=info["ae_train_s"],
                          extract_s=time.perf_counter() - start)


def lm_layers(clips: LabelledClips, codes: dict[str, np.ndarray], vocab_size: int, run: Path, layers_spec: str,
              batch_clips: int, tokenizer_info: dict, device, progress: bool = True,
              lm_dir: Path | None = None) -> list[Representation]:
    """The code LM's hidden states (RUN/lm, or ``lm_dir``), mean-pooled over time, one
    representation per layer."""
    lm_dir = Path(lm_dir) if lm_dir is not None else run / "lm"
    if not (lm_dir / "stage.json").is_file():
        raise Unavailable(f"no trained LM at {lm_dir} (run `tokenlm pretrain {run}` first)")
    try:
        from tokenlm.lm import CodeLM
    except ImportError as err:
        raise Unavailable(f"the LM module cannot be imported ({err})") from None
    lm = CodeLM.load(lm_dir, device=device)
    if int(lm.codebook_size) != int(vocab_size):
        raise Unavailable(f"the LM was trained on {lm.codebook_size}-code tokens, the probed codes have "
                          f"{vocab_size} (pass -K {lm.codebook_size})")
    start = time.perf_counter()
    pooled = []  # (clips, layers + 1, d) per chunk
    chunk = 4 * batch_clips  # several LM batches per call: the LM sorts windows by length inside it
    for s in _bar(range(0, len(clips), chunk), "LM", progress):
        batch = [codes[clip_id] for clip_id in clips.ids[s : s + chunk]]
        pooled.append(lm.pooled_hidden_states(batch, batch_size=batch_clips).float().cpu().numpy())
    stacked = np.concatenate(pooled)  # (N, layers + 1, d)
    extract_s = (time.perf_counter() - start) / stacked.shape[1]
    params = _module_params(getattr(lm, "model", lm))
    if params is not None and tokenizer_info.get("encoder_params") is not None:
        params += tokenizer_info["encoder_params"] + tokenizer_info.get("codebook_params", 0)
    train_s = _stage_seconds(lm_dir)
    if train_s is not None and tokenizer_info.get("train_s") is not None:
        train_s += tokenizer_info["train_s"]
    return [
        Representation(f"lm_layer_{n}", f"LM layer {n}" + (" (embeddings)" if n == 0 else ""), stacked[:, n],
                       encoder_params=params, encoder_train_s=train_s, extract_s=extract_s,
                       notes="encoder = tokenizer + LM")
        for n in parse_layers(layers_spec, stacked.shape[1])
    ]


def _check_same_features(tokenizer, clips: LabelledClips) -> None:
    """The tokenizer must read log-mel computed the way the run's features were."""
    features = getattr(getattr(tokenizer, "coder", None), "features", None)
    if features is None:
        return
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
        if name in clips.meta and getattr(features, name) != clips.meta[name]:
            raise ArtifactError(f"the tokenizer was trained on features with {name}={getattr(features, name)}, "
                                f"the run's features have {clips.meta[name]}: rebuild one of them")


def _mean_std(x: np.ndarray) -> np.ndarray:
    """(T, D) -> (2 D,): mean and std over time."""
    return np.concatenate([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


# --------------------------------------------------------------------------- codes and tokenizer


def load_codes(run: Path, codebook_size: int | None, clips: LabelledClips) -> tuple[dict[str, np.ndarray], dict, Path]:
    """Every labelled clip's codes by id, the tokens' meta.json and folder.

    Raises Unavailable when the run has no tokens, ArtifactError when the codes disagree with
    the features about a clip's split.
    """
    directory = _tokens_folder(run, codebook_size)
    meta = read_json(directory / "meta.json")
    codes, split_of = {}, {}
    for split in SPLITS:
        if not (directory / f"{split}.index.jsonl").is_file():
            continue
        store = RaggedSplit(directory, split, "uint16")
        for row, array in store:
            codes[str(row["id"])] = np.asarray(array)
            split_of[str(row["id"])] = split
    for clip_id, split in zip(clips.ids, clips.splits):
        if clip_id in split_of and split_of[clip_id] != split:
            raise ArtifactError(f"clip {clip_id} is in {split_of[clip_id]} in {directory} but in {split} in the "
                                f"features: the tokens are out of date (rerun `tokenlm tokenize`)")
    missing = [i for i in clips.ids if i not in codes]
    if missing:
        raise Unavailable(f"{len(missing)} labelled clip(s) have no codes in {directory} (e.g. {missing[0]})")
    return codes, meta, directory


def _tokens_folder(run: Path, codebook_size: int | None) -> Path:
    root = run / "tokens"
    if codebook_size is None:
        current = tokenizer_dir(run) / "current.json"
        if current.is_file():
            codebook_size = int(read_json(current)["codebook_size"])
        else:
            found = sorted(p for p in root.glob("k*") if (p / "stage.json").is_file())
            if len(found) != 1:
                raise Unavailable(f"no codes to probe in {root}" if not found else
                                  f"several codebooks in {root} ({', '.join(p.name for p in found)}): pass -K")
            return found[0]
    directory = root / f"k{codebook_size}"
    if not (directory / "stage.json").is_file():
        raise Unavailable(f"no codes at {directory} (run `tokenlm tokenize --out {run} -K {codebook_size}` first)")
    return directory


def _load_tokenizer(run: Path, codebook_size, device):
    if not (tokenizer_dir(run) / "stage.json").is_file():
        raise Unavailable(f"no trained tokenizer at {tokenizer_dir(run)} (run `tokenlm tokenize` first)")
    try:
        from tokenlm.tokenizer import AudioTokenizer
    except ImportError as err:
        raise Unavailable(f"the tokenizer module cannot be imported ({err})") from None
    try:
        return AudioTokenizer.load(tokenizer_dir(run), codebook_size=codebook_size, device=device)
    except ArtifactError as err:  # e.g. no codebook of that size: the other rows still stand
        raise Unavailable(str(err)) from None


def _tokenizer_info(run: Path, tokenizer=None, codebook_size=None) -> dict:
    """The tokenizer's encoder-side parameters and training times, when known.

    ``encoder_params``: the autoencoder's encoder; ``codebook_params``: K x d centroids;
    ``ae_train_s``: the autoencoder stage; ``train_s``: autoencoder + codebook (what codes cost).
    """
    info = {"encoder_params": None, "codebook_params": 0, "ae_train_s": _stage_seconds(tokenizer_dir(run)),
            "train_s": None}
    if tokenizer is None:
        try:
            tokenizer = _load_tokenizer(run, codebook_size, "cpu")
        except (Unavailable, TokenlmError):
            return info
    encoder = getattr(getattr(getattr(tokenizer, "coder", None), "autoencoder", None), "encoder", None)
    info["encoder_params"] = _module_params(encoder)
    centroids = getattr(tokenizer, "centroids", None)
    if centroids is not None:
        info["codebook_params"] = int(np.asarray(centroids).size)
    codebook = getattr(tokenizer, "info", {}).get("codebook_dir")
    codebook_s = _stage_seconds(Path(codebook)) if codebook else None
    if info["ae_train_s"] is not None:
        info["train_s"] = info["ae_train_s"] + (codebook_s or 0.0)
    return info


def _module_params(obj) -> int | None:
    parameters = getattr(obj, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else None


def _stage_seconds(directory: Path) -> float | None:
    try:
        return float(read_json(directory / "stage.json").get("wall_time_s"))
    except (ArtifactError, TypeError, ValueError):
        return None


def _optional_key(directory: Path) -> str | None:
    try:
        return stage_key(directory)
    except ArtifactError:
        return None


# --------------------------------------------------------------------------- probing


def probe_vectors(vectors: np.ndarray, clips: LabelledClips, config: ProbeConfig) -> dict:
    """The linear probe on per-clip ``vectors``: split result and, with folds, the fold CV."""
    test = None
    if len(clips.index("test")):
        test = fit_linear_probe(*(clips.xy(vectors, s) for s in SPLITS), Cs=config.cs, seed=config.seed,
                                max_iter=config.max_iter).to_dict()
    folds = None
    if config.folds and clips.has_folds:
        folds = cross_validate_folds(vectors, clips.labels, clips.folds, Cs=config.cs, seed=config.seed,
                                     max_iter=config.max_iter).to_dict()
    if test is None and folds is None:
        raise ArtifactError("the run has no test clip and no official folds: nothing to report")
    return {"dim": int(vectors.shape[1]), "test": test, "folds": folds}


def representation_row(rep: Representation, clips: LabelledClips, config: ProbeConfig) -> dict:
    """A results row for a representation: the probe's scores and the encoder's costs."""
    try:
        scores = probe_vectors(rep.vectors, clips, config)
    except ValueError as err:  # e.g. a single class in train: the user's data, not a bug
        raise TokenlmError(f"{rep.title}: {err}") from None
    fit_s = (scores["test"] or {}).get("fit_seconds", 0.0) + (scores["folds"] or {}).get("fit_seconds", 0.0)
    return {
        "name": rep.name, "title": rep.title, "kind": LINEAR, "status": "ok", **scores,
        "encoder_params": rep.encoder_params, "flops_per_second": rep.flops_per_second,
        "encoder_train_s": rep.encoder_train_s, "probe_fit_s": round(fit_s, 3),
        "extract_s": round(rep.extract_s, 3), "notes": rep.notes,
    }


def skipped_row(name: str, title: str, reason: str) -> dict:
    return {"name": name, "title": title, "status": "skipped", "reason": reason}


def selection_score(row: dict) -> float:
    """Val accuracy a row is chosen by (folds: mean over folds)."""
    if row.get("folds") and row["folds"].get("val_accuracy_mean") is not None:
        return row["folds"]["val_accuracy_mean"]
    return (row.get("test") or {}).get("val_accuracy") or 0.0


# --------------------------------------------------------------------------- baselines


def _crop_frames(clips: LabelledClips, config: ProbeConfig) -> int:
    return max(1, round(config.crop_seconds * clips.frame_rate))


def _train_config(clips: LabelledClips, config: ProbeConfig):
    from tokenlm.baselines.cnn import ClassifierTraining as TrainConfig

    return TrainConfig(crop_frames=_crop_frames(clips, config), batch_size=config.batch_size, epochs=config.epochs,
                       patience=config.patience, lr=config.lr, weight_decay=config.weight_decay, seed=config.seed)


def _model_config(name: str, clips: LabelledClips, config: ProbeConfig, n_classes: int):
    from tokenlm.models.cnn import TimbreConfig, VGGConfig

    if name == "timbre":
        return TimbreConfig(n_mels=clips.n_mels, n_classes=n_classes, heights=config.timbre_heights,
                            widths=config.timbre_widths, filters=config.timbre_filters, dropout=config.dropout)
    return VGGConfig(n_mels=clips.n_mels, n_classes=n_classes, channels=config.vgg_channels,
                     convs_per_block=config.vgg_convs_per_block, dropout=config.dropout)


def _cost(model, clips: LabelledClips, method: str = "forward") -> dict:
    from tokenlm.baselines.cnn import count_flops, count_parameters

    one_second = max(1, round(clips.frame_rate))
    return {"encoder_params": count_parameters(model),
            "flops_per_second": count_flops(model, (1, clips.n_mels, one_second), method=method)}


def _artifact_extra(clips: LabelledClips, config: ProbeConfig) -> dict:
    """What a saved baseline needs to be used on new audio: its input and normalisation."""
    keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_floor")
    return {"features": {k: clips.meta.get(k) for k in keys}, "norm": clips.meta["norm"],
            "classes": clips.classes, "crop_frames": _crop_frames(clips, config)}


def supervised_baseline(run: Path, name: str, clips: LabelledClips, config: ProbeConfig, device,
                        progress: bool = True) -> dict:
    """RUN/baselines/<name> (vgg or timbre): trained on train, early-stopped on val, scored on
    test with its own classifier; with official folds, also one model per fold."""
    model_config = _model_config(name, clips, config, len(clips.classes))
    train_config = _train_config(clips, config)
    use_folds = config.baseline_folds and config.folds and clips.has_folds
    stage = Stage(run / "baselines" / name,
                  config={"model": to_dict(model_config), "train": to_dict(train_config), "folds": use_folds,
                          "classes": clips.classes},
                  inputs={"features": stage_key(clips.features_dir)})
    if stage.done:
        _say(f"baseline {name} up to date: {stage.out_dir}")
        return read_json(stage.out_dir / "results.json")
    work = stage.start()
    _say(f"baseline {name}: training")
    masks = {s: clips.splits == s for s in SPLITS}
    extra = _artifact_extra(clips, config)
    split_result, model = _fit_supervised(name, model_config, train_config, clips, masks, work, extra, device,
                                          progress)
    folds = None
    if use_folds:
        per_fold = []
        for test_fold, val_fold in fold_assignments(clips.folds.tolist()):
            fold_masks = {"test": clips.folds == test_fold, "val": clips.folds == val_fold}
            fold_masks["train"] = ~(fold_masks["test"] | fold_masks["val"])
            out = work / "folds" / f"fold{test_fold}"
            result, _ = _fit_supervised(name, model_config, train_config, clips, fold_masks, out, extra,
                                        device, progress, desc=f"{name} fold {test_fold}")
            per_fold.append({"test_fold": test_fold, "val_fold": val_fold,
                             **{k: v for k, v in result.items() if k != "history"}})
        folds = summarise_folds(per_fold).to_dict()
    results = {
        "name": name, "title": _BASELINE_TITLES[name], "kind": SUPERVISED, "status": "ok",
        "dim": model.embed_dim, "test": {k: v for k, v in split_result.items() if k != "history"},
        "folds": folds, **_cost(model, clips), "encoder_train_s": split_result["train_seconds"],
        "probe_fit_s": None, "history": split_result["history"],
    }
    write_json(work / "results.json", results)
    stage.finish(extra={"accuracy": split_result.get("accuracy")})
    _say(f"baseline {name}: test accuracy {_pct(split_result.get('accuracy'))} -> {stage.out_dir}")
    return results


def _fit_supervised(name, model_config, train_config, clips: LabelledClips, masks: dict, out: Path, extra: dict,
                    device, progress: bool, desc: str | None = None):
    """Train one CNN on ``masks['train']``, early-stop on val, score test; save into ``out``.

    A model that ``out`` already holds (finished before an interruption) is reused.
    """
    import torch
    from sklearn.metrics import f1_score

    from tokenlm.baselines.cnn import load_model, predict_clips, save_model, train_classifier
    from tokenlm.models.cnn import MODELS

    if (out / MODEL_RESULTS).is_file() and (out / "model.safetensors").is_file():
        return read_json(out / MODEL_RESULTS), load_model(out)[0]

    class_index = {c: i for i, c in enumerate(clips.classes)}
    targets = np.array([class_index[label] for label in clips.labels])
    pick = {s: np.flatnonzero(masks[s]) for s in SPLITS}
    data = {s: ([clips.normalised[i] for i in pick[s]], targets[pick[s]]) for s in SPLITS}
    torch.manual_seed(train_config.seed)  # the initial weights too are seeded
    model = MODELS[name][1](model_config)
    log = train_classifier(model, data["train"], data["val"], train_config, device, progress, desc=desc or name)
    result = {k: log[k] for k in ("epochs_run", "best_epoch", "best_val_accuracy", "train_seconds", "history")}
    result["val_accuracy"] = result.pop("best_val_accuracy")
    result.update(n_train=len(pick["train"]), n_val=len(pick["val"]), n_test=len(pick["test"]))
    if len(pick["test"]):
        predicted = predict_clips(model, data["test"][0], train_config.crop_frames, device).argmax(1)
        truth = data["test"][1]
        result["accuracy"] = float(np.mean(predicted == truth))
        result["macro_f1"] = float(f1_score(truth, predicted, average="macro", zero_division=0))
    out.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), out, extra=extra)
    write_json(out / MODEL_RESULTS, result)  # last: its presence means the model is complete
    return result, model


def simclr_baseline(run: Path, clips: LabelledClips, config: ProbeConfig, device, progress: bool = True) -> dict:
    """RUN/baselines/simclr: the VGG trunk trained with NT-Xent on the train split's audio (no
    labels), its pooled embeddings of every clip, and the same linear probe as every row."""
    import torch

    from tokenlm.baselines.cnn import embed_clips, save_model
    from tokenlm.baselines.simclr import AugmentConfig, SimCLRConfig, train_simclr
    from tokenlm.models.cnn import VGGish
    from tokenlm.models.simclr import SimCLRModel

    trunk_config = _model_config("vgg", clips, config, n_classes=0)
    simclr_config = SimCLRConfig(crop_frames=_crop_frames(clips, config), batch_size=config.simclr_batch_size,
                                 epochs=config.simclr_epochs, lr=config.lr, weight_decay=config.weight_decay,
                                 temperature=config.simclr_temperature,
                                 projection_dim=config.simclr_projection_dim, seed=config.seed)
    augment_config = AugmentConfig()
    probe_settings = {"cs": list(config.cs), "max_iter": config.max_iter, "seed": config.seed, "folds": config.folds}
    stage = Stage(run / "baselines" / "simclr",
                  config={"trunk": to_dict(trunk_config), "simclr": to_dict(simclr_config),
                          "augment": to_dict(augment_config), "probe": probe_settings},
                  inputs={"features": stage_key(clips.features_dir)})
    if stage.done:
        _say(f"baseline simclr up to date: {stage.out_dir}")
        return read_json(stage.out_dir / "results.json")
    work = stage.start()
    _say("baseline simclr: contrastive training on the train split (no labels)")
    torch.manual_seed(config.seed)
    model = SimCLRModel(VGGish(trunk_config), simclr_config.projection_dim)
    train_clips = [clips.logmel(i) for i in clips.index("train")]
    log = train_simclr(model, train_clips, clips.norm_mean, clips.norm_std, simclr_config, augment_config,
                       device, progress)
    start = time.perf_counter()
    vectors = embed_clips(model.trunk, clips.normalised, simclr_config.crop_frames, device)  # (N, D)
    extract_s = time.perf_counter() - start
    trunk = model.trunk.cpu()
    save_model(trunk, work, extra={**_artifact_extra(clips, config), "simclr": to_dict(simclr_config)})
    np.save(work / "embeddings.npy", vectors.astype(np.float32))
    write_jsonl(work / "embeddings.jsonl", [{"id": i, "split": s} for i, s in zip(clips.ids, clips.splits)])
    scores = probe_vectors(vectors, clips, config)
    fit_s = (scores["test"] or {}).get("fit_seconds", 0.0) + (scores["folds"] or {}).get("fit_seconds", 0.0)
    results = {
        "name": "simclr", "title": _BASELINE_TITLES["simclr"], "kind": LINEAR, "status": "ok", **scores,
        **_cost(trunk, clips, method="embed"), "encoder_train_s": log["train_seconds"],
        "probe_fit_s": round(fit_s, 3), "extract_s": round(extract_s, 3), "history": log["history"],
    }
    write_json(work / "results.json", results)
    stage.finish(extra={"accuracy": (scores["test"] or {}).get("accuracy")})
    accuracy = _pct((scores["test"] or {}).get("accuracy"))
    _say(f"baseline simclr: linear-probe test accuracy {accuracy} -> {stage.out_dir}")
    return results


_BASELINE_TITLES = {
    "vgg": "VGG-style CNN (supervised)",
    "timbre": "timbre CNN, vertical filters (supervised)",
    "simclr": "SimCLR CNN trunk (self-supervised)",
}


def run_baseline(run: Path, name: str, clips: LabelledClips, config: ProbeConfig, device, progress: bool) -> dict:
    """Train (or reuse) one baseline; its results.json."""
    try:
        if name == "simclr":
            return simclr_baseline(run, clips, config, device, progress)
        return supervised_baseline(run, name, clips, config, device, progress)
    except ValueError as err:  # too little data for this baseline: say so in one line
        raise TokenlmError(f"baseline {name}: {err}") from None


# --------------------------------------------------------------------------- the stage


def probe(run_dir: str | Path, config: ProbeConfig = ProbeConfig(), *, device: str | None = None,
          progress: bool = True, lm_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """Probe every representation of ``run_dir`` and train the requested baselines.

    Needs RUN/features; the code rows need RUN/tokens, the autoencoder row RUN/tokenizer, the
    LM rows RUN/lm or ``lm_dir`` (each skipped with its reason when missing). Writes RUN/probe,
    or ``out_dir`` (the sweep probes one LM per codebook size), and returns it.
    """
    from tokenlm.runtime import pick_device, seed_everything

    run = Path(run_dir)
    if not (features_dir(run) / "stage.json").is_file():
        raise ArtifactError(f"{run} has no features: run `tokenlm prepare --data DIR --out {run}` first")
    torch_device = pick_device(device)
    seed_everything(config.seed)
    clips = LabelledClips(run)
    baselines = {name: run_baseline(run, name, clips, config, torch_device, progress) for name in config.baselines}

    inputs = {"features": stage_key(features_dir(run)), "tokenizer": _optional_key(tokenizer_dir(run)),
              "lm": _optional_key(Path(lm_dir) if lm_dir is not None else run / "lm")}
    try:
        inputs["tokens"] = _optional_key(_tokens_folder(run, config.codebook_size))
    except Unavailable:
        inputs["tokens"] = None
    inputs.update({f"baseline_{n}": stage_key(run / "baselines" / n) for n in baselines})
    stage = Stage(Path(out_dir) if out_dir is not None else run / "probe", config=to_dict(config), inputs=inputs)
    if stage.done:
        _say(f"probe up to date: {stage.out_dir}")
        return stage.out_dir
    work = stage.start()
    rows = representation_rows(run, clips, config, torch_device, progress, lm_dir=lm_dir)
    rows += [_baseline_row(results) for results in baselines.values()]
    results = {"run": str(run), "dataset": clips.summary(), "config": to_dict(config), "rows": rows}
    write_json(work / "results.json", results)
    (work / "report.md").write_text(render_report(results))
    stage.finish(extra={"rows": {r["name"]: _headline(r) for r in rows}})
    click.echo(f"probe results: {stage.out_dir / 'results.json'}\nprobe report:  {stage.out_dir / 'report.md'}")
    return stage.out_dir


def representation_rows(run: Path, clips: LabelledClips, config: ProbeConfig, device, progress: bool,
                        lm_dir: Path | None = None) -> list[dict]:
    """Every non-baseline row, in table order; rows whose inputs are missing come back skipped."""
    rows = [representation_row(logmel_stats(clips, progress), clips, config)]
    try:
        codes, tokens_meta, _ = load_codes(run, config.codebook_size, clips)
    except Unavailable as why:
        codes, tokens_meta, codes_reason = None, None, str(why)
    tokenizer_info = _tokenizer_info(run, codebook_size=tokens_meta and tokens_meta.get("vocab_size"))

    if codes is None:
        rows.append(skipped_row("bag_of_codes", "bag of codes", codes_reason))
    else:
        vocab = int(tokens_meta.get("vocab_size") or max(int(c.max(initial=0)) for c in codes.values()) + 1)
        if any(len(c) and int(c.max()) >= vocab for c in codes.values()):
            raise ArtifactError(f"codes beyond the vocabulary of {vocab} in RUN/tokens: the tokens are corrupt")
        rows.append(representation_row(bag_of_codes(clips, codes, vocab, tokenizer_info), clips, config))

    try:
        rows.append(representation_row(autoencoder_bottleneck(clips, run, config.codebook_size, device, progress),
                                       clips, config))
    except Unavailable as why:
        rows.append(skipped_row("autoencoder", "autoencoder bottleneck", str(why)))

    if codes is None:
        rows.append(skipped_row("lm", "LM hidden states", codes_reason))
        return rows
    try:
        layers = lm_layers(clips, codes, vocab, run, config.layers, config.lm_batch_clips, tokenizer_info, device,
                           progress, lm_dir=lm_dir)
    except Unavailable as why:
        rows.append(skipped_row("lm", "LM hidden states", str(why)))
        return rows
    layer_rows = [representation_row(rep, clips, config) for rep in layers]
    best = max(layer_rows, key=selection_score)
    rows += layer_rows
    rows.append({**best, "name": "lm_best", "title": f"LM best layer ({best['title'].split(' (')[0]}, chosen on val)",
                 "layer": best["name"]})
    return rows


def _baseline_row(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "history"}


def _headline(row: dict):
    if row.get("status") != "ok":
        return "skipped"
    return (row.get("folds") or {}).get("accuracy_mean", (row.get("test") or {}).get("accuracy"))


# --------------------------------------------------------------------------- report


def render_report(results: dict) -> str:
    """report.md: the comparison table, then the skipped rows and how to read the table."""
    dataset = results["dataset"]
    with_folds = any(r.get("folds") for r in results["rows"] if r.get("status") == "ok")
    clips = dataset["clips"]
    lines = [
        "# Linear probes and baselines",
        "",
        f"Run `{results['run']}`: {clips['train']} train / {clips['val']} val / {clips['test']} test clips, "
        f"{len(dataset['classes'])} classes."
        + (f" Majority class on test: {_pct(dataset['majority_class_test_accuracy'])}."
           if dataset.get("majority_class_test_accuracy") is not None else ""),
        "",
    ]
    if with_folds:
        n = len(dataset["folds"])
        lines += [f"Accuracy and macro-F1: mean ± std over {n} official folds (each fold is test once, the "
                  "fold before it picks the hyper-parameters). The test-split column is the run's own split.", ""]
    header = ["representation", "how", "accuracy", "macro-F1", "dim", "encoder params", "MFLOPs / s audio",
              "encoder training (s)", "probe fit (s)"]
    if with_folds:
        header.append("test-split acc.")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        if row.get("status") != "ok":
            continue
        lines.append("| " + " | ".join(_table_cells(row, with_folds)) + " |")
    skipped = [r for r in results["rows"] if r.get("status") != "ok"]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {r['title']}: {r['reason']}" for r in skipped]
    lines += [
        "",
        f"*{LINEAR}*: the same standardised multinomial logistic regression on frozen features for every "
        "row (C chosen on val). "
        f"*{SUPERVISED}*: the network's own classifier, trained with labels (not a probe).",
        "Log-mel statistics are the floor a learned representation must beat. Self-supervised encoders "
        "(tokenizer, LM, SimCLR) saw only the train split's audio, without labels.",
        "FLOPs: 2 per multiply-add of the convolutions and linear layers, for one second of audio.",
        "Training time: the encoder's own stages (for codes and the LM: autoencoder + codebook + LM).",
    ]
    if with_folds:
        lines.append("In the fold cross-validation, encoders trained without labels on the run's train split "
                     "have heard the audio (never the labels) of the folds in that split.")
    lines.append("")
    return "\n".join(lines)


def _table_cells(row: dict, with_folds: bool) -> list[str]:
    test = row.get("test") or {}
    folds = row.get("folds")
    if with_folds and folds:
        accuracy = f"{_pct(folds['accuracy_mean'])} ± {_pct(folds['accuracy_std'], sign=False)}"
        macro_f1 = f"{_pct(folds['macro_f1_mean'])} ± {_pct(folds['macro_f1_std'], sign=False)}"
    else:
        accuracy, macro_f1 = _pct(test.get("accuracy")), _pct(test.get("macro_f1"))
    flops = row.get("flops_per_second")
    cells = [
        row["title"], row["kind"], accuracy, macro_f1, str(row.get("dim", "–")),
        _count(row.get("encoder_params")), "–" if flops is None else f"{flops / 1e6:,.1f}",
        _seconds(row.get("encoder_train_s")), _seconds(row.get("probe_fit_s")),
    ]
    if with_folds:
        cells.append(_pct(test.get("accuracy")))
    return cells


def _pct(value, sign: bool = True) -> str:
    return "–" if value is None else f"{100 * value:.1f}" + ("%" if sign else "")


def _count(value) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"


def _seconds(value) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _bar(iterable, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="clip" if desc != "LM" else "batch", disable=not progress, leave=False)


def _say(text: str) -> None:
    click.echo(text, err=True)


# --------------------------------------------------------------------------- command


@click.command("probe")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--baselines", help="Comma list of baselines to train and compare: vgg,simclr,timbre (or none).")
@click.option("--layers", help="LM layers to probe: all (default) or a comma list, 0 = embedding output.")
@click.option("-K", "--codebook-size", type=int,
              help="Codebook size whose codes are probed (default: the run's current).")
@click.option("--config", "recipe", type=click.Path(dir_okay=False), help="Recipe YAML (section: probe; run.dir).")
@click.option("--epochs", type=int, help="Upper bound on supervised baseline epochs (early stopping on val).")
@click.option("--simclr-epochs", type=int, help="SimCLR training epochs.")
@click.option("--seed", type=int, help="Seed for the probes and baselines.")
@click.option("--no-folds", is_flag=True, default=None, help="Skip the cross-validation over official folds.")
@click.option("--device", help="cpu, cuda or auto (default).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(run, baselines, layers, codebook_size, recipe, epochs, simclr_epochs, seed, no_folds, device, no_progress):
    """Linear probes of every representation of RUN, beside the CNN baselines: one table.

    \b
    tokenlm probe runs/demo
    tokenlm probe runs/demo --baselines vgg,simclr,timbre --layers 0,4,8
    Writes RUN/probe/results.json and RUN/probe/report.md; baselines go to RUN/baselines/<name>/.
    """
    run = run or recipe_section(recipe, "run").get("dir")
    if not run:
        raise TokenlmError("need RUN (or a recipe with run.dir)")
    overrides = {"baselines": baselines, "layers": layers, "codebook_size": codebook_size, "epochs": epochs,
                 "simclr_epochs": simclr_epochs, "seed": seed, "folds": False if no_folds else None}
    config = build(ProbeConfig, recipe_section(recipe, "probe"), overrides, where="probe")
    out = probe(run, config, device=device, progress=not no_progress)
    click.echo((out / "report.md").read_text())
