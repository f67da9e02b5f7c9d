"""The vocoder's training data: each clip's audio aligned with its codes, and random
code-aligned crops of it.

A split's audio is read once with ``load_audio`` at the tokenizer's sample rate, turned into
what the WaveNet models (``signal``: pre-emphasised, LPC-whitened; tokenlm.vocoder.vocoder) and held in
memory as 8-bit mu-law classes (one byte a sample: the demo's 480 two-second clips are 15 MB,
an hour of audio 58 MB), laid out like the token file so that code ``i`` of the split covers
samples ``i * samples_per_code ...``. Each clip's audio is cut or zero-padded to exactly
``codes x samples_per_code`` samples (a centred STFT gives a clip up to one hop more codes than
whole codes fit in it). A training window is a random code-aligned crop of ``crop_codes``
codes and their audio, drawn uniformly over every (clip, start) pair; only a generator seeded
by (seed, rank, step) decides it (tokenlm.training). A crop that starts inside a clip leaves its
first ``receptive_field`` samples unscored: their true past lies before the crop and the model
would only see silence there.

``AlignedAudio`` holds every clip it is given (the validation clips, rawlm's splits);
``StreamedAudio`` serves the training crops the same way but decodes a clip when a crop first
needs it and keeps the clips most recently used in a cache of ``cache_mb`` (the recipe's
``vocoder.cache_mb``): the same crops, memory bounded whatever the split's size.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import ArtifactError, AudioError
from tokenlm.core.progress import progress_bar
from tokenlm.data.audio import load_audio, row_source
from tokenlm.data.files import check_unchanged
from tokenlm.data.store import RaggedSplit
from tokenlm.models.wavenet import mu_law_encode
from tokenlm.run import lock as runlock
from tokenlm.run.input_check import run_input_hashes
from tokenlm.run.rundir import RunDir, read_run_manifest
from tokenlm.training.checkpoint import unwrap

IGNORE = -100  # target of samples that are not scored


def clip_rows(run: RunDir) -> dict[str, dict]:
    """Clip id -> its row in the run's manifest (path, file stamp, ...), each clip's file
    checked against its stamp (a change of ctime or inode alone settled by the run's content
    hashes, recorded when this command holds the run)."""
    rows = {row["id"]: row for row in read_run_manifest(run) if row.get("id") is not None}
    hashes = run_input_hashes(run)
    for row in rows.values():
        if row.get("status") == "ok":
            check_unchanged(row, hashes)
    if runlock.holds(run.root):
        hashes.save()
    return rows


def load_aligned(clip: dict, n_codes: int, sample_rate: int, samples_per_code: int) -> np.ndarray:
    """A clip's audio (``clip``: its manifest row) at ``sample_rate``, cut or zero-padded to
    ``n_codes * samples_per_code``; the file must be the one ``prepare`` read."""
    path = clip["path"]
    check_unchanged(clip)
    try:
        wav = load_audio(row_source(clip), sample_rate)
    except AudioError as err:
        hint = " (manifest paths are relative to the folder the run was prepared from)" \
            if not Path(path).is_absolute() and "not found" in err.reason else ""
        raise ArtifactError(f"cannot read the audio of a tokenized clip: {err}{hint}") from None
    n = n_codes * samples_per_code
    if len(wav) < n:
        wav = np.pad(wav, (0, n - len(wav)))
    return wav[:n]


def _load_many(clips: list[dict], lengths: list[int], sample_rate: int, spc: int, desc: str, progress: bool):
    """load_aligned over many clips, two decoding threads (soundfile and soxr release the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = pool.map(lambda job: load_aligned(job[0], job[1], sample_rate, spc), zip(clips, lengths))
        yield from progress_bar(jobs, total=len(clips), desc=desc, unit="clip", enabled=progress, leave=False)


def to_mu_law(wav: np.ndarray, n_classes: int = 256) -> np.ndarray:
    """Float audio -> mu-law classes as uint8 (uint16 beyond 256 classes)."""
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    return mu_law_encode(torch.from_numpy(np.ascontiguousarray(wav)), n_classes).numpy().astype(dtype)


class AlignedAudio:
    """Some clips of a split: their codes and their mu-law audio, flat and code-aligned.

    ``audio[(offsets[i] + j) * spc : ...]`` is the audio of code ``codes[offsets[i] + j]``.
    """

    def __init__(self, codes: list[np.ndarray], audio_q: list[np.ndarray], ids: list[str], spc: int):
        self.spc = spc
        self.ids = ids
        self.lengths = np.array([len(c) for c in codes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.codes = np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)
        self.audio = np.concatenate(audio_q) if audio_q else np.zeros(0, np.uint8)

    @classmethod
    def load(cls, run: RunDir, split: RaggedSplit, indices, sample_rate: int, spc: int, n_classes: int,
             progress: bool = True, signal=None) -> "AlignedAudio":
        """``signal(wav, codes)``: what the WaveNet models of a whole clip (tokenlm.vocoder.vocoder.network_signal),
        quantised to mu-law; None: the audio itself."""
        clips = clip_rows(run)
        rows = [split.rows[i] for i in indices]
        missing = [r["id"] for r in rows if r["id"] not in clips]
        if missing:
            raise ArtifactError(f"{run.manifest} does not list clip {missing[0]} of the tokens: "
                                f"the tokens are from another run")
        codes = [np.asarray(split[i], dtype=np.int64) for i in indices]
        waves = _load_many([clips[r["id"]] for r in rows], [len(c) for c in codes], sample_rate, spc,
                           f"{split.split} audio", progress)
        audio = [to_mu_law(signal(w, c) if signal else w, n_classes) for w, c in zip(waves, codes)]
        return cls(codes, audio, [r["id"] for r in rows], spc)

    def crop(self, clip: int, start: int, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
        """(audio classes (n_codes * spc,), codes (n_codes,)) from code ``start`` of clip ``clip``."""
        first = int(self.offsets[clip]) + start
        return (self.audio[first * self.spc:(first + n_codes) * self.spc],
                self.codes[first:first + n_codes])

    @property
    def n_samples(self) -> int:
        return len(self.audio)


class StreamedAudio:
    """Clips ``indices`` of a split as ``AlignedAudio`` gives them (``lengths``, ``ids``,
    ``crop``), each clip read and turned into mu-law classes when first cropped, then kept in
    a least-recently-used cache of at most ``cache_mb`` megabytes (a clip larger than the cache
    is kept alone): a crop is the same array whatever the cache holds."""

    def __init__(self, run: RunDir, split: RaggedSplit, indices, sample_rate: int, spc: int, n_classes: int,
                 cache_mb: float, signal=None):
        manifest = clip_rows(run)
        ids = [split.rows[i]["id"] for i in indices]
        missing = [clip_id for clip_id in ids if clip_id not in manifest]
        if missing:
            raise ArtifactError(f"{run.manifest} does not list clip {missing[0]} of the tokens: "
                                f"the tokens are from another run")
        self.clips = [manifest[clip_id] for clip_id in ids]  # only these rows are kept
        self.ids, self.split, self.indices = ids, split, np.asarray(indices, dtype=np.int64)
        self.lengths = np.asarray(split.lengths)[self.indices]
        self.sample_rate, self.spc, self.n_classes, self.signal = sample_rate, spc, n_classes, signal
        self.cache_bytes = int(cache_mb * 1e6)
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cached_bytes = 0
        self.decoded = 0  # clips read so far (a clip evicted and needed again counts twice)

    @property
    def n_samples(self) -> int:
        return int(self.lengths.sum()) * self.spc

    def clip(self, clip: int) -> tuple[np.ndarray, np.ndarray]:
        """(mu-law audio, codes int64) of clip number ``clip`` (of ``indices``)."""
        if clip in self.cache:
            self.cache.move_to_end(clip)
            return self.cache[clip]
        codes = np.asarray(self.split[int(self.indices[clip])], dtype=np.int64)
        wav = load_aligned(self.clips[clip], len(codes), self.sample_rate, self.spc)
        audio = to_mu_law(self.signal(wav, codes) if self.signal else wav, self.n_classes)
        self.decoded += 1
        self.cache[clip] = (audio, codes)
        self.cached_bytes += audio.nbytes + codes.nbytes
        while self.cached_bytes > self.cache_bytes and len(self.cache) > 1:
            _, (old_audio, old_codes) = self.cache.popitem(last=False)
            self.cached_bytes -= old_audio.nbytes + old_codes.nbytes
        return audio, codes

    def crop(self, clip: int, start: int, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
        audio, codes = self.clip(clip)
        return audio[start * self.spc:(start + n_codes) * self.spc], codes[start:start + n_codes]


class CropBatches:
    """Training batches of code-aligned crops, drawn from a numpy Generator only (a batch is a
    pure function of (seed, rank, step): see tokenlm.training). Every (clip, start) pair is
    equally likely, so every code is about equally often in a window."""

    def __init__(self, data: AlignedAudio, crop_codes: int, receptive_field: int):
        self.data = data
        self.crop_codes = crop_codes
        self.receptive_field = receptive_field
        self.clips = np.flatnonzero(data.lengths >= crop_codes)
        counts = data.lengths[self.clips] - crop_codes + 1
        self.ends = np.cumsum(counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def __call__(self, rng: np.random.Generator, batch_size: int):
        picks = rng.integers(0, self.total, size=batch_size)
        which = np.searchsorted(self.ends, picks, side="right")
        starts = picks - (self.ends[which] - (self.data.lengths[self.clips[which]] - self.crop_codes + 1))
        return self.batch([(int(self.clips[w]), int(s)) for w, s in zip(which, starts)])

    def batch(self, crops: list[tuple[int, int]]):
        """(audio_q (B, T), codes (B, N), targets (B, T)) LongTensors for (clip, start) pairs."""
        audio, codes = zip(*(self.data.crop(c, s, self.crop_codes) for c, s in crops))
        audio_q = torch.from_numpy(np.stack(audio).astype(np.int64))
        targets = audio_q.clone()
        for row, (_, start) in enumerate(crops):
            if start > 0:  # the true past lies before the crop: do not score what cannot see it
                targets[row, : self.receptive_field] = IGNORE
        return audio_q, torch.from_numpy(np.stack(codes)), targets


def validation_crops(data: AlignedAudio, n_crops: int, crop_codes: int, seed: int) -> list[tuple[int, int]]:
    """Fixed (clip, start) windows: clips taken in turn, each at a seeded random start."""
    eligible = np.flatnonzero(data.lengths >= crop_codes)
    rng = np.random.default_rng([seed, 7])
    crops = []
    for i in range(min(n_crops, len(eligible) * 4)):
        clip = int(eligible[i % len(eligible)])
        crops.append((clip, int(rng.integers(0, data.lengths[clip] - crop_codes + 1))))
    return crops


def spread(n_items: int, n_wanted: int) -> list[int]:
    """``n_wanted`` indices spread evenly over ``range(n_items)`` (splits are sorted by label)."""
    if n_items <= 0 or n_wanted <= 0:
        return []
    if n_wanted >= n_items:
        return list(range(n_items))
    return sorted({int(round(x)) for x in np.linspace(0, n_items - 1, n_wanted)})


def wavenet_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats per sample) over the scored samples, and their number."""
    audio_q, codes, targets = batch
    output = model(audio_q, codes)  # (B, channels, T); model may be DDP-wrapped, its scoring is not
    return unwrap(model).nll(output, targets, ignore_index=IGNORE), count_scored(batch)


def count_scored(batch) -> int:
    """Samples a batch scores (what samples/s counts)."""
    return int((batch[2] != IGNORE).sum())
