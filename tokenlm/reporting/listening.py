"""The report's listening section: every audio example with its log-mel spectrogram, level and flags.

The examples are the vocoder's val excerpts (RUN/vocoder/samples: original and resynthesis)
and the pipeline's continuation (RUN/generated/*_continued.wav: a test clip continued by the
code LM, decoded by the WaveNet; its spectrogram marks where the prompt ends). Outputs that are
silent or clipped are flagged, since a broken vocoder otherwise looks like a quiet result.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from tokenlm.core.fileio import read_json
from tokenlm.data.features import FeatureConfig
from tokenlm.run.rundir import META, SAMPLES, RunDir, figure_file, info_file

# Below this RMS a clip is flagged silent: -60 dBFS is far under any recorded sound kept by the
# data stage, and what a vocoder that outputs its mu-law midpoint produces.
SILENT_RMS_DBFS = -60.0
# A sample at or above this magnitude sits at full scale (16-bit wav: within a few LSB of it).
FULL_SCALE = 0.999
# Clipping flattens the tops: runs of this many samples at full scale in a row. A normalised
# recording touches full scale in single samples.
CLIPPED_RUN = 3
# Flagged clipped when more than this fraction of samples lies in such runs.
CLIPPED_FRACTION = 0.001


def audio_level(audio: np.ndarray) -> dict:
    """RMS in dBFS, peak, and the fraction of samples clipped (in runs of CLIPPED_RUN or more
    at full scale) of float audio in [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float64)
    if not audio.size:
        return {"rms_dbfs": -math.inf, "peak": 0.0, "clipped_fraction": 0.0}
    rms = float(np.sqrt(np.mean(audio ** 2)))
    full = (np.abs(audio) >= FULL_SCALE).astype(np.int64)
    run_starts = np.convolve(full, np.ones(CLIPPED_RUN, np.int64), "valid") == CLIPPED_RUN
    clipped = np.convolve(run_starts, np.ones(CLIPPED_RUN, np.int64))[: len(audio)] > 0  # every sample of a run
    return {"rms_dbfs": 20 * math.log10(rms) if rms > 0 else -math.inf, "peak": float(np.abs(audio).max()),
            "clipped_fraction": float(np.mean(clipped))}


def audio_flags(audio: np.ndarray) -> list[str]:
    """Why ``audio`` is not worth listening to as it is: silent, clipped, or nothing."""
    level = audio_level(audio)
    flags = []
    if level["rms_dbfs"] < SILENT_RMS_DBFS:
        flags.append(f"silent (RMS {_db(level['rms_dbfs'])} dBFS, below {SILENT_RMS_DBFS:.0f})")
    if level["clipped_fraction"] > CLIPPED_FRACTION:
        flags.append(f"clipped ({100 * level['clipped_fraction']:.1f}% of samples flattened at full scale)")
    return flags


def listening_section(run: RunDir) -> str | None:
    """Markdown: the excerpt table and the continuation, each file linked (report.html turns
    the links into players) beside its spectrogram in RUN/report_files/; other generated wavs
    linked."""
    originals = sorted((run.vocoder / SAMPLES).glob("*_original.wav"))
    continued = sorted(run.generated.glob("*_continued.wav"))
    others = [p for p in sorted(run.generated.glob("*.wav")) if p not in continued]
    if not originals and not continued and not others:
        return None
    features = _features(run)
    flagged: list[str] = []
    lines = ["### Listening\n"]
    if originals:
        griffin_lim = [_griffin_lim_file(run, original) for original in originals]
        with_gl = any(path.is_file() for path in griffin_lim)
        lines += ["Val excerpts, each from its start: the input, then the WaveNet's resynthesis from its codes"
                  + (", then the Griffin-Lim reference from the same codes (no training)" if with_gl else "")
                  + " (log-mel spectrograms; brighter is louder).\n",
                  "| excerpt | original | resynthesis |" + (" Griffin-Lim |" if with_gl else ""),
                  "|---|---|---|" + ("---|" if with_gl else "")]
        for original, reference in zip(originals, griffin_lim):
            resynth = original.with_name(original.name.replace("_original.wav", "_resynth.wav"))
            stem = original.name[: -len("_original.wav")]
            paths = (original, resynth, reference) if with_gl else (original, resynth)
            cells = [_cell(run, path, features, flagged) for path in paths]
            lines.append(f"| {stem} | " + " | ".join(cells) + " |")
        lines.append("")
    for path in continued:
        info = read_json(info_file(path)) if info_file(path).is_file() else {}
        boundary = info.get("prompt_seconds") if info.get("prompt") else None
        lines.append(_continuation_text(path, info))
        lines.append(_cell(run, path, features, flagged, boundary=boundary, separator="\n\n") + "\n")
    if others:
        lines += ["Other generated audio:\n"] + [f"- [{p.name}]({_target(run, p)})" for p in others] + [""]
    if flagged:
        lines.insert(1, "**Flagged:** " + "; ".join(flagged) + ".\n")
    return "\n".join(lines)


def _griffin_lim_file(run: RunDir, original: Path) -> Path:
    """The Griffin-Lim reference's excerpt beside an original (stages/vocoder.py writes it)."""
    return run.vocoder / SAMPLES / "griffinlim" / original.name.replace("_original.wav", "_griffinlim.wav")


def other_audio_section(run: RunDir, linked: str) -> str | None:
    """Every wav in the run that the report has not linked yet (rawlm samples, the sweep's
    per-K decoders, files added by hand), grouped by folder: report.html gives each a player."""
    found = sorted(p for p in run.root.rglob("*.wav")
                   if not any(part.startswith(".") for part in p.relative_to(run.root).parts))
    missing = [p for p in found if f"]({_target(run, p)})" not in linked]
    if not missing:
        return None
    lines = ["## Every other audio file\n", "The run's other audio, each with a player in report.html:\n"]
    for folder in sorted({p.parent for p in missing}):
        lines.append(f"`{folder.relative_to(run.root).as_posix()}/`: " + " · ".join(
            f"[{p.name}]({_target(run, p)})" for p in missing if p.parent == folder) + "\n")
    return "\n".join(lines)


def _continuation_text(path: Path, info: dict) -> str:
    if not info.get("prompt"):
        return f"The pipeline's example `{path.name}`:\n"
    return (f"The whole pipeline: the test clip `{Path(info['prompt']).name}` ({info['prompt_seconds']:.2f} s, left "
            f"of the dashed line) continued by the code LM for {info['generated_codes']} codes "
            f"({info['generated_codes'] / info['code_rate']:.2f} s), all decoded by the WaveNet"
            + (" (the prompt's own audio fed in)" if info.get("primed") else "") + ":\n")


def _cell(run: RunDir, path: Path, features: FeatureConfig, flagged: list[str], boundary: float | None = None,
          separator: str = "<br>") -> str:
    """One file: its link, length, level and flags, then its spectrogram (appends to ``flagged``)."""
    if not path.is_file():
        return "(missing)"
    audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    flags = audio_flags(audio)
    flagged += [f"`{path.name}` {flag}" for flag in flags]
    level = audio_level(audio)
    text = (f"[{path.name}]({_target(run, path)}) {len(audio) / sample_rate:.2f} s, "
            f"RMS {_db(level['rms_dbfs'])} dBFS, peak {level['peak']:.2f}")
    if flags:
        text += " **⚠ " + "; ".join(flags) + "**"
    figure = plot_mel(audio, replace(features, sample_rate=sample_rate),
                      run.report_files / figure_file(f"mel_{path.stem}"), boundary)
    return text + separator + f"![log-mel of {path.name}]({_target(run, figure)})"


def plot_mel(audio: np.ndarray, features: FeatureConfig, path: Path, boundary: float | None = None) -> Path:
    """A log-mel spectrogram PNG against seconds; ``boundary`` (s) drawn as a dashed line."""
    import torch

    from tokenlm.core.extras import pyplot

    plt = pyplot()  # matplotlib (tokenlm[report]) on Agg

    from tokenlm.data.features import LogMel

    padded = np.pad(audio, (0, max(0, features.n_fft - len(audio))))
    mel = LogMel(features)(torch.from_numpy(np.ascontiguousarray(padded))).numpy().T  # (M, frames)
    seconds = len(audio) / features.sample_rate
    fig, ax = plt.subplots(figsize=(4.2 if boundary is None else 7, 2.2))
    top = float(mel.max())
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
              extent=(0, seconds, 0, mel.shape[0]))
    if boundary is not None:
        ax.axvline(boundary, color="white", ls="--", lw=1.5)
        ax.text(boundary, mel.shape[0] * 0.92, " continuation", color="white", fontsize=8)
    ax.set_xlabel("s")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _features(run: RunDir) -> FeatureConfig:
    """The run's log-mel settings (default ones for a run without features)."""
    meta_path = run.features / META
    meta = read_json(meta_path) if meta_path.is_file() else {}
    return FeatureConfig(**{k: meta[k] for k in FeatureConfig.__dataclass_fields__ if k in meta})


def _target(run: RunDir, path: Path) -> str:
    """A markdown link target relative to RUN; in <> when the name has spaces or brackets."""
    relative = path.relative_to(run.root).as_posix()
    return f"<{relative}>" if any(c in relative for c in " ()<>") else relative


def _db(value: float) -> str:
    return "-inf" if value == -math.inf else f"{value:.0f}"
