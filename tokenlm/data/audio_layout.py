"""In-memory audio in whichever layout the caller has, as (samples, channels) numpy.

soundfile gives (T, C); ``torchaudio.load`` and most torch code give (C, T). A 2-D array is
read as channels on the small axis: at most ``MAX_CHANNELS`` along one axis and more along the
other. When both axes are that small (a few samples of stereo, (2, 8)) or both are large, the
layout cannot be told apart, and the caller says it with ``layout="channels_first"`` (C, T) or
``layout="channels_last"`` (T, C) instead of getting codes of the wrong signal.

    samples = as_samples_by_channels(torch_wav)                 # (2, 16000) -> (16000, 2)
    samples = as_samples_by_channels(wav, layout="channels_first")
"""

from __future__ import annotations

import numpy as np

from tokenlm.core.errors import ConfigError

# More channels than this along an axis makes it the time axis (7.1 surround has 8; ambisonics 16).
MAX_CHANNELS = 16
LAYOUTS = ("channels_first", "channels_last")


def as_numpy(audio) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like as a float32 numpy array."""
    if hasattr(audio, "detach") and hasattr(audio, "cpu"):  # torch.Tensor, without importing torch here
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio, dtype=np.float32)


def as_samples_by_channels(audio, layout: str | None = None, what: str = "audio") -> np.ndarray:
    """(T,) -> (T,); (C, T) or (T, C) -> (T, C), read from ``layout`` or from the shape (see the
    module docstring). A ConfigError in one line when the shape cannot be read."""
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    samples = as_numpy(audio)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ConfigError(f"{what} must be (samples,), (channels, samples) or (samples, channels), "
                          f"got shape {samples.shape}")
    if layout is None:
        layout = _guess_layout(samples.shape, what)
    return samples.T if layout == "channels_first" else samples


def _guess_layout(shape: tuple[int, int], what: str) -> str:
    rows_small, cols_small = shape[0] <= MAX_CHANNELS, shape[1] <= MAX_CHANNELS
    if rows_small != cols_small:
        return "channels_first" if rows_small else "channels_last"
    raise ConfigError(f"{what} of shape {shape} is ambiguous (which axis is channels?): pass "
                      f"layout='channels_first' for (channels, samples) or layout='channels_last' for "
                      f"(samples, channels)")


def as_mono(audio, layout: str | None = None, what: str = "audio") -> np.ndarray:
    """Any layout ``as_samples_by_channels`` reads -> (T,) float32, the mean of the channels."""
    samples = as_samples_by_channels(audio, layout, what)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)
