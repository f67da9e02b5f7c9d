"""Audio files -> a token store, streamed: ``encode_clips`` decodes clips on two threads while
the encoder runs, in batches bounded by seconds of audio, and encodes a clip longer than a
batch block by block as its decoding blocks come, cut on patch boundaries, so memory never
grows with a recording's length and every clip gets the codes ``AudioTokenizer.encode`` gives
it. Used by ``tokenize`` (RUN/tokens/k{K}) and by encoding new data with a trained tokenizer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import AudioError
from tokenlm.core.fileio import write_json
from tokenlm.core.progress import progress_bar
from tokenlm.core.runtime import bounded_map, kernel_threads, pick_device
from tokenlm.data.audio import audio_seconds, row_source
from tokenlm.data.clips import SPLITS
from tokenlm.data.features import LogMel, file_log_mel, log_mel_blocks
from tokenlm.data.store import RaggedWriter, close_shards, write_shard_list
from tokenlm.engine import LOCAL, EngineConfig, blocks
from tokenlm.run.rundir import META
from tokenlm.tokenizer.published import load_tokenizer
from tokenlm.tokenizer.tokenizer import AudioTokenizer

# encode_clips' passes: seconds of audio decoded ahead and encoded at once (10 minutes of
# log-mel is 15 MB), and at most this many clips in one pass (short clips).
BATCH_SECONDS = 600.0
BATCH_CLIPS = 32
STREAM_PIECE_SECONDS = 60.0  # audio per encoder pass of a clip encoded block by block


def encode_clips(tokenizer: AudioTokenizer, rows: list[dict], out: Path, *, progress: bool = True,
                 batch_seconds: float = BATCH_SECONDS, durations: dict | None = None,
                 engine: EngineConfig = LOCAL) -> dict:
    """Encode clips (manifest rows: id, path, label, split) into ``out``, streaming: memory grows
    neither with the corpus nor with a clip's length (files are decoded in blocks; about
    ``batch_seconds`` of audio is decoded ahead and encoded per pass, and a longer clip is
    encoded as its blocks come). Clips
    that fail to decode are listed in meta.json's ``skipped``. ``durations``, when given,
    receives each encoded clip's id -> seconds.

    ``engine`` says where (``tokenlm.engine``): the rows are cut into the engine's blocks of
    audio either way, and no encoder pass spans two blocks, so a clip's codes never depend on
    the engine or the number of workers (FAISS's distances, hence a near tie, may depend on
    which vectors share a search)."""
    skipped = []
    seconds = {r["id"]: audio_seconds(row_source(r)) for r in rows}  # each header read once here
    work = blocks(rows, lambda r: seconds[r["id"]], engine.block_seconds)

    def take(block_rows: list[dict], results) -> None:
        for row, (num_samples, reason) in zip(block_rows, results):
            if reason is not None:
                skipped.append({"id": row["id"], "path": row["path"], "reason": reason})
            elif durations is not None:
                durations[row["id"]] = round(num_samples / tokenizer.sample_rate, 4)

    if engine.is_ray:
        shards = _encode_on_ray(tokenizer, work, out, batch_seconds, engine, progress, take)
        tokens = {s: sum(r["length"] for _, index in shards[s] for r in index) for s in SPLITS}
        clips = {s: sum(len(index) for _, index in shards[s]) for s in SPLITS}
    else:
        writers = {s: RaggedWriter(out, s, "uint16", width=tokenizer.levels) for s in SPLITS}
        starts = set(np.cumsum([0] + [len(b) for b in work[:-1]]).tolist())
        bar = progress_bar(encode_rows(tokenizer, rows, writers, batch_seconds, starts, seconds), total=len(rows),
                           desc="encode", unit="clip", enabled=progress)
        take(rows, bar)
        for w in writers.values():
            w.close()
        tokens, clips = {s: w.offset for s, w in writers.items()}, {s: len(w.rows) for s, w in writers.items()}
    meta = {
        "codebook_size": tokenizer.codebook_size,
        "code_rate": tokenizer.code_rate,
        "sample_rate": tokenizer.sample_rate,
        "samples_per_code": tokenizer.samples_per_code,
        "patch_frames": tokenizer.patch_frames,
        "dtype": "uint16",
        # Several codes per patch: each split's bin is (codes, levels) row-major, a patch's
        # levels (or groups) side by side; one code per patch leaves these keys out.
        **({"levels": tokenizer.levels, "quantizer": tokenizer.quantizer.kind} if tokenizer.levels > 1 else {}),
        "tokenizer_hash": tokenizer.info.get("tokenizer_hash"),
        "tokenizer_dir": tokenizer.info.get("tokenizer_dir"),
        "tokens": tokens,
        "clips": clips,
        "skipped": skipped,
    }
    write_json(out / META, meta)
    return meta


def _encode_on_ray(tokenizer: AudioTokenizer, work: list[list[dict]], out: Path, batch_seconds: float,
                   engine: EngineConfig, progress: bool, take) -> dict[str, list]:
    """Encode the blocks of rows ``work`` on Ray workers that write a shard per block and split
    into ``out``, handing each block's results to ``take`` in order; then write each split's
    index and shard list. Returns the shards (file, index entries) of each split."""
    from tokenlm.engine.ray_map import map_blocks

    shards: dict[str, list] = {s: [] for s in SPLITS}
    device = "auto" if engine.gpus_per_worker else "cpu"
    folder = tokenizer.info.get("codebook_dir") or tokenizer.info["pretrained_dir"]  # a run's or a published one
    results = map_blocks(engine, EncodeBlocks, (folder, out, batch_seconds, device), work,
                         progress=progress, gpus=engine.gpus_per_worker)
    for block_rows, result in zip(work, progress_bar(results, total=len(work), desc="encode", unit="block",
                                                     enabled=progress)):
        take(block_rows, result["clips"])
        for split, shard in result["shards"].items():
            shards[split].append(shard)
    for split in SPLITS:
        write_shard_list(out, split, shards[split])
    return shards


class EncodeBlocks:
    """A Ray worker of ``encode_clips``: the tokenizer loaded once, from its folder; then one
    block of rows -> its shards in ``out``, and each row's (samples, reason). ``device``:
    "cpu", or "auto" (the GPU Ray gave this worker, where torch sees one)."""

    def __init__(self, codebook_dir: str, out: Path, batch_seconds: float, device: str = "cpu"):
        self.tokenizer = load_tokenizer(codebook_dir, device=pick_device(device))
        self.out, self.batch_seconds = Path(out), batch_seconds

    def __call__(self, number: int, rows: list[dict]) -> dict:
        writers = {s: RaggedWriter(self.out, s, "uint16", width=self.tokenizer.levels, shard=number) for s in SPLITS}
        results = list(encode_rows(self.tokenizer, rows, writers, self.batch_seconds, starts={0}))
        return {"clips": results, "shards": close_shards(writers)}


def encode_rows(tokenizer: AudioTokenizer, rows: list[dict], writers: dict[str, RaggedWriter],
                batch_seconds: float, starts: set[int], seconds: dict | None = None):
    """Encode ``rows`` into their split's writer, yielding in row order each row's (samples,
    None), or (0, reason) for a clip that cannot be decoded. No batch spans a position in
    ``starts`` (where a block of the engine begins). ``seconds``: each row's audio seconds by
    id, when the caller has read the headers already."""
    features = tokenizer.coder.features
    log_mel = LogMel(features)  # on the CPU, in the decoding threads
    max_frames = max(int(batch_seconds * features.frame_rate), 4 * features.patch_frames)
    # Decoding (soundfile + soxr + log-mel) releases the GIL: two threads decode the next
    # batch while this one encodes the current one. The encoder's passes are bounded, so
    # torch's and FAISS's own thread pools are turned off meanwhile: competing with the
    # decoding threads (or anything else on the machine) their spin-waits made encoding
    # 10-15x slower.
    with kernel_threads(1, faiss=True), ThreadPoolExecutor(max_workers=2) as pool:
        # A clip longer than a batch is left to this thread, which encodes it block by block
        # into its writer (``_encode_streamed``): its frames are never held whole.
        if seconds is None:  # a Ray worker's block: its own clips' headers
            seconds = {r["id"]: audio_seconds(row_source(r)) for r in rows}
        streamed = {i for i, s in seconds.items() if s > batch_seconds}
        loaded = bounded_map(pool, lambda r: _STREAMED if r["id"] in streamed else _clip_frames(row_source(r), log_mel),
                             rows, ahead=BATCH_CLIPS, budget=batch_seconds,
                             weight=lambda r: 0.0 if r["id"] in streamed else seconds[r["id"]])
        for batch in _batches(zip(rows, loaded), max_frames, starts):
            if batch[0][1] is _STREAMED:
                row = batch[0][0]
                writer = writers[row.get("split") or "train"]
                yield _encode_streamed(tokenizer, row, log_mel, writer, max_frames)
                continue
            good = [(row, clip) for row, clip in batch if isinstance(clip, ClipFrames)]
            codes = iter(_encode(tokenizer, [c.frames for _, c in good], max_frames))
            for row, clip in batch:  # in order: a writer's clips, and the results
                if isinstance(clip, ClipFrames):
                    writers[row.get("split") or "train"].add({"id": row["id"], "label": row.get("label")}, next(codes))
                    yield clip.num_samples, None
                else:
                    yield 0, clip


@dataclass(frozen=True)
class ClipFrames:
    """One clip's log-mel frames (frames, M) in dB and its length in samples."""

    frames: torch.Tensor
    num_samples: int


def _clip_frames(path: str, log_mel: LogMel):
    """ClipFrames, or the reason the file cannot be used."""
    try:
        frames, num_samples = file_log_mel(path, log_mel, min_samples=log_mel.config.n_fft)
    except AudioError as err:
        return err.reason
    return ClipFrames(torch.from_numpy(frames), num_samples)


_STREAMED = object()  # in place of a clip encoded block by block by the writing thread


def _encode_streamed(tokenizer: AudioTokenizer, row: dict, log_mel: LogMel, writer: RaggedWriter,
                     max_frames: int):
    """Encode a long clip as its log-mel blocks come, in the pieces ``_pieces`` would cut (so
    its codes are the whole clip's), writing each piece's codes: (samples, None), or (0,
    reason) with the writer left as it was."""
    features = tokenizer.coder.features
    step, size = features.patch_step, features.patch_frames
    # Pieces of a few decoding blocks: a batch's worth (10 minutes) per pass let the peak grow
    # with the number of passes (0.40 GB for a 2-hour file, 0.36 GB for 15 minutes).
    max_frames = min(max_frames, int(STREAM_PIECE_SECONDS * features.frame_rate))
    advance = max(1, (max_frames - size) // step + 1) * step
    piece = advance - step + size
    pending, num_samples, seen = np.zeros((0, features.n_mels), np.float32), 0, 0
    skip = 0  # frames between two pieces not yet arrived (patches further apart than long)
    writer.begin(row["id"])
    try:
        for frames, samples in log_mel_blocks(row_source(row), log_mel, min_samples=features.n_fft):
            num_samples, seen = num_samples + samples, seen + len(frames)
            dropped = min(skip, len(frames))
            pending, skip = np.concatenate([pending, frames[dropped:]]), skip - dropped
            while len(pending) >= piece:
                writer.extend(tokenizer.encode_frames(torch.from_numpy(pending[:piece])).numpy())
                pending, skip = pending[advance:], max(0, advance - len(pending))
        if len(pending) >= size or seen < size:  # the last patches; a clip under a patch is padded
            writer.extend(tokenizer.encode_frames(torch.from_numpy(pending)).numpy())
    except AudioError as err:
        writer.discard()
        return 0, err.reason
    writer.end({"id": row["id"], "label": row.get("label")})
    return num_samples, None


def _batches(pairs, max_frames: int, starts: set[int]):
    """Consecutive (row, ClipFrames or reason) pairs, grouped until their frames reach
    ``max_frames`` or BATCH_CLIPS clips: seconds of audio set a batch's size, not clip count.
    A batch ends before each position in ``starts``."""
    batch, frames = [], 0
    for position, (row, clip) in enumerate(pairs):
        if position in starts and batch:
            yield batch
            batch, frames = [], 0
        if clip is _STREAMED:  # a batch of its own, in its place
            if batch:
                yield batch
            yield [(row, clip)]
            batch, frames = [], 0
            continue
        batch.append((row, clip))
        frames += len(clip.frames) if isinstance(clip, ClipFrames) else 0
        if frames >= max_frames or len(batch) >= BATCH_CLIPS:
            yield batch
            batch, frames = [], 0
    if batch:
        yield batch


def _encode(tokenizer: AudioTokenizer, clips: list[torch.Tensor], max_frames: int) -> list[np.ndarray]:
    """Each clip's codes from its frames, at most about ``max_frames`` frames per autoencoder
    and FAISS pass. A long clip is cut on patch boundaries (``_pieces``), so its codes are
    those of the whole clip."""
    pieces = [(i, piece) for i, frames in enumerate(clips) for piece in _pieces(frames, tokenizer, max_frames)]
    codes = [[] for _ in clips]
    start = 0
    while start < len(pieces):
        end, total = start + 1, len(pieces[start][1])
        while end < len(pieces) and total + len(pieces[end][1]) <= max_frames:
            total += len(pieces[end][1])
            end += 1
        passed = pieces[start:end]
        for (i, _), piece_codes in zip(passed, tokenizer.encode_frames_batch([p for _, p in passed])):
            codes[i].append(piece_codes.numpy())
        start = end
    return [np.concatenate(c) for c in codes]


def _pieces(frames: torch.Tensor, tokenizer: AudioTokenizer, max_frames: int) -> list[torch.Tensor]:
    """``frames`` (frames, M) in pieces of at most ``max_frames`` whose patches, together, are
    exactly the whole clip's: pieces start on patch starts and overlap as patches do."""
    features = tokenizer.coder.features
    step, size = features.patch_step, features.patch_frames
    if len(frames) <= max_frames:
        return [frames]  # the encoder pads a clip shorter than a patch, so keep such clips whole
    advance = max(1, (max_frames - size) // step + 1) * step  # frames between piece starts
    return [frames[s:s + advance - step + size] for s in range(0, len(frames) - size + 1, advance)]


