"""WaveNet decoder: discrete codes -> 16 kHz audio (stage 6 of the pipeline).

An autoregressive model over 8-bit mu-law samples. Each sample is predicted from the
previous ones through a stack of causal dilated convolutions with gated (tanh * sigmoid)
units, residual and skip connections, and a 256-way softmax (or a discretized logistic
mixture over the same classes: distribution.py). Local conditioning on the
tokenizer's codes tells the model *what* to say; the autoregression supplies the waveform
detail that the codes threw away.

Conditioning path (one code covers ``samples_per_code`` samples)::

    codes (B, N) -> embedding -> conv over codes (k=3) -> tanh     # (B, C, N)
                 -> repeat each code samples_per_code times          # (B, C, N * spc)
                 -> + learned "phase" vector for the position inside the code
                 -> per layer: 1x1 conv into the gate

With ``mel_bins`` > 0 the codes also say what their spectrum is: ``code_mel`` holds the
tokenizer's decoded log-mel patch of every code (centroid -> autoencoder decoder, normalised;
a fixed (K, frames_per_code * mel_bins) table, filled by ``set_code_mel``), and a small
network over frames (two k=3 convs, non-causal) adds its features to the code embedding
before the frames are linearly interpolated to exactly N * spc samples::

    codes -> code_mel table -> frames (B, M, N * P) -> conv, tanh, conv     # (B, C, N * P)
          + code features repeated P times -> tanh -> interpolate to N * spc + phase

Either way the residual layers see one per-sample conditioning tensor (B, C, N * spc)
(``upsample_conditioning``) through a 1x1 conv each. The log-mel gives the decoder the
spectral envelope outright instead of leaving it to learn one embedding per code from a few
minutes of audio (see tokenlm.pipeline.vocoder for what that bought).

Why repeat-interleave rather than a transposed convolution: the length is exactly
``N * samples_per_code`` by construction (the classic vocoder bug is an upsampler whose
kernel/stride/padding arithmetic drifts from the hop), it adds no checkerboard artifacts
and no parameters per upsampled sample, and, because the conditioning is constant inside a
code, its per-layer projections can be computed once per *code* instead of once per sample.
The incremental generator relies on that: conditioning costs one table lookup per step.
The phase vector (``samples_per_code`` x C, shared by all codes) gives the model its
position inside the patch, which plain repetition would hide.

Generation has two paths that must agree:

- ``IncrementalDecoder`` (incremental.py; used by ``generate``): every dilated layer keeps a
  ring buffer of its past inputs, so one new sample costs O(layers) work instead of a forward
  pass over the whole receptive field (the "fast WaveNet" queue idea). On CPU with numba,
  ``generate`` runs the same algorithm as one compiled call per block of samples
  (``FusedDecoder``, fused.py).
- ``generate_naive``: recomputes the receptive-field window for every sample. Slow; kept as
  the reference for tests and the benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenlm.models.wavenet.conditioning import SampleConditionedDecoder
from tokenlm.models.wavenet.config import WaveNetConfig
from tokenlm.models.wavenet.distribution import (
    INITIAL_LOG_SCALE, MixtureOutput, class_logits, negative_log_likelihood, output_channels,
)
from tokenlm.models.wavenet.fused import FusedDecoder, FusedSampleConditionedDecoder, fused_available
from tokenlm.models.wavenet.incremental import GumbelSampler, IncrementalDecoder
from tokenlm.models.wavenet.modules import ResidualLayer, mu_law_decode, mu_law_encode

__all__ = ["WaveNetConfig", "WaveNet"]


# --------------------------------------------------------------------------- model


class WaveNet(nn.Module):
    """Autoregressive mu-law waveform model, optionally conditioned on tokenizer codes.

    Input at time t is the previous sample x[t-1] (silence before the start); the output at
    time t is a distribution over x[t] (teacher forcing).
    """

    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.config = config
        # An embedding of the previous sample's class is a one-hot input followed by a 1x1
        # convolution, without building the one-hot tensor.
        self.input_embedding = nn.Embedding(config.n_classes, config.residual_channels)
        dilations = config.dilations
        self.layers = nn.ModuleList(
            ResidualLayer(config, d, has_residual=i < len(dilations) - 1) for i, d in enumerate(dilations)
        )
        self.output_hidden = nn.Conv1d(config.skip_channels, config.skip_channels, 1)
        self.output_logits = nn.Conv1d(config.skip_channels,
                                       output_channels(config.n_classes, config.logistic_components), 1)
        if config.logistic_components:  # start the logistics at the excitation's scale (1/16), not at 1
            nn.init.constant_(self.output_logits.bias[2 * config.logistic_components:], INITIAL_LOG_SCALE)
        if config.conditioned:
            self.code_embedding = nn.Embedding(config.codebook_size, config.cond_channels)
            # Non-causal over codes (one code of look-ahead): codes are known before decoding.
            self.code_context = nn.Conv1d(config.cond_channels, config.cond_channels, 3, padding=1)
            self.code_phase = nn.Parameter(0.1 * torch.randn(config.cond_channels, config.samples_per_code))
        if config.lpc_order:  # used by the Vocoder around sampling, kept here to travel with the weights
            self.register_buffer("code_lpc", torch.zeros(config.codebook_size, config.frames_per_code,
                                                         config.lpc_order + 1))
        if config.mel_conditioned:
            table = torch.zeros(config.codebook_size, config.frames_per_code * config.mel_bins)
            self.register_buffer("code_mel", table)  # saved with the weights: the vocoder stands alone
            self.mel_context = nn.Sequential(
                nn.Conv1d(config.mel_bins, config.cond_channels, 3, padding=1), nn.Tanh(),
                nn.Conv1d(config.cond_channels, config.cond_channels, 3, padding=1))

    # ----------------------------------------------------------------- helpers

    @property
    def silence_class(self) -> int:
        """Mu-law class of 0.0: the input that precedes the first sample."""
        return int(mu_law_encode(torch.zeros(()), self.config.n_classes))

    @property
    def receptive_field(self) -> int:
        return self.config.receptive_field

    def _param(self) -> Tensor:
        return self.input_embedding.weight

    def shift_right(self, audio_q: Tensor) -> Tensor:
        """Teacher-forcing inputs: (B, T) targets -> (B, T) previous samples, silence first."""
        start = torch.full_like(audio_q[:, :1], self.silence_class)
        return torch.cat([start, audio_q[:, :-1]], dim=1)

    def _check_codes(self, codes: Tensor | None) -> Tensor | None:
        cfg = self.config
        if codes is None:
            if cfg.conditioned:
                raise ValueError(f"this WaveNet is conditioned (codebook_size={cfg.codebook_size}): pass codes")
            return None
        if not cfg.conditioned:
            raise ValueError("this WaveNet is unconditioned (codebook_size=0): codes must be None")
        if codes.dim() != 2:
            raise ValueError(f"codes must be (batch, n_codes), got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"codes must be integer, got {codes.dtype}")
        codes = codes.long().to(self._param().device)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size):
            raise ValueError(f"codes must lie in [0, {cfg.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
                             " (codebook size does not match the vocoder?)")
        return codes

    @torch.no_grad()
    def set_code_mel(self, table: Tensor) -> None:
        """Fill the decoded log-mel of every code: (K, frames_per_code * mel_bins), normalised
        (what the tokenizer's autoencoder decodes each centroid to)."""
        cfg = self.config
        expected = (cfg.codebook_size, cfg.frames_per_code * cfg.mel_bins)
        if not cfg.mel_conditioned or tuple(table.shape) != expected:
            raise ValueError(f"code_mel table must be {expected} for this WaveNet, got {tuple(table.shape)}")
        self.code_mel.copy_(table)

    def upsample_conditioning(self, codes: Tensor) -> Tensor:
        """Codes (B, N) -> conditioning features at the sample rate (B, C, N * samples_per_code)."""
        spc = self.config.samples_per_code
        n_codes = codes.shape[1]
        if self.config.mel_conditioned:
            per_sample = self._frame_features(codes)
        else:
            per_sample = self._code_features(codes).repeat_interleave(spc, dim=2)
        up = per_sample + self.code_phase.repeat(1, n_codes)  # (B, C, N*spc)
        # Checked explicitly (not with assert, which python -O strips): a conditioning stream
        # that drifts from the audio is the classic silent vocoder bug.
        if up.shape[-1] != n_codes * spc:
            raise RuntimeError(f"upsampled conditioning has {up.shape[-1]} samples, expected "
                               f"{n_codes} codes x {spc} samples_per_code = {n_codes * spc}")
        return up

    def _code_features(self, codes: Tensor) -> Tensor:
        """Codes (B, N) -> per-code conditioning features (B, C, N), before upsampling."""
        emb = self.code_embedding(codes).transpose(1, 2)  # (B, C, N)
        return torch.tanh(self.code_context(emb))

    def _frame_features(self, codes: Tensor) -> Tensor:
        """Codes (B, N) -> code + decoded log-mel features interpolated to (B, C, N * spc)."""
        cfg = self.config
        batch, n_codes = codes.shape
        frames = self.code_mel[codes].view(batch, n_codes * cfg.frames_per_code, cfg.mel_bins)
        per_frame = self.mel_context(frames.transpose(1, 2))  # (B, C, N * P)
        per_frame = torch.tanh(per_frame + self._code_features(codes).repeat_interleave(cfg.frames_per_code, dim=2))
        # size= fixes the length exactly, whatever the hop; linear so the envelope has no steps.
        return F.interpolate(per_frame, size=n_codes * cfg.samples_per_code, mode="linear", align_corners=False)

    def _run_stack(self, inputs_q: Tensor, cond: Tensor | None,
                   keep_last: list[int] | None = None) -> tuple[Tensor, list[Tensor]]:
        """Shifted inputs (B, T) + cond (B, C, T) -> output layer (B, channels, T) (see ``forward``).

        With ``keep_last``, also returns each layer's last ``keep_last[i]`` input frames
        (B, R, k) — what an incremental decoder needs in its buffers after a prompt.
        """
        x = self.input_embedding(inputs_q).transpose(1, 2)  # (B, R, T)
        skip = None
        tails = []
        for i, layer in enumerate(self.layers):
            if keep_last is not None:
                tails.append(x[:, :, -keep_last[i]:])
            x, s = layer(x, cond)
            skip = s if skip is None else skip + s
        h = self.output_hidden(F.relu(skip))
        return self.output_logits(F.relu(h)), tails  # (B, channels, T)

    # ----------------------------------------------------------------- training pass

    def forward(self, audio_q: Tensor, codes: Tensor | None = None) -> Tensor:
        """Teacher-forced output layer.

        audio_q: (B, T) mu-law classes (targets); codes: (B, N) or None.
        Returns (B, channels, T) whose [:, :, t] predicts audio_q[:, t] from audio_q[:, :t]:
        the class logits (B, n_classes, T) for the softmax, the mixture's parameters otherwise
        (``class_logits`` turns either into class log-probabilities, ``nll`` scores targets).
        With codes, T must equal N * samples_per_code.
        """
        if audio_q.dim() != 2:
            raise ValueError(f"audio_q must be (batch, samples), got shape {tuple(audio_q.shape)}")
        codes = self._check_codes(codes)
        cond = None
        if codes is not None:
            n_samples = codes.shape[1] * self.config.samples_per_code
            if audio_q.shape[1] != n_samples or audio_q.shape[0] != codes.shape[0]:
                raise ValueError(
                    f"audio has shape {tuple(audio_q.shape)} but codes {tuple(codes.shape)} need "
                    f"(batch {codes.shape[0]}, {codes.shape[1]} codes x {self.config.samples_per_code} "
                    f"samples_per_code = {n_samples} samples): trim audio to whole codes")
            cond = self.upsample_conditioning(codes)
        logits, _ = self._run_stack(self.shift_right(audio_q), cond)
        return logits

    def class_logits(self, output: Tensor) -> Tensor:
        """Output layer (B, channels, ...) -> class log-probabilities (B, n_classes, ...) (distribution.py)."""
        return class_logits(output, self.config.n_classes, self.config.logistic_components)

    def nll(self, output: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean negative log-likelihood (nats) of target classes (B, T) under ``forward``'s output,
        targets equal to ``ignore_index`` left out."""
        return negative_log_likelihood(output, targets, self.config.n_classes, self.config.logistic_components,
                                       ignore_index)

    # ----------------------------------------------------------------- generation

    def _generation_args(self, codes, n_samples, batch_size, prompt_q):
        """Validate generate() arguments -> (codes, n_samples, batch, prompt)."""
        codes = self._check_codes(codes)
        if codes is not None:
            total = codes.shape[1] * self.config.samples_per_code
            n_samples = total if n_samples is None else n_samples
            if n_samples > total:
                raise ValueError(f"n_samples={n_samples} exceeds what {codes.shape[1]} codes cover ({total})")
            batch_size = codes.shape[0]
        elif n_samples is None:
            raise ValueError("an unconditioned WaveNet needs n_samples")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if prompt_q is not None:
            if prompt_q.dim() != 2 or prompt_q.shape[0] != batch_size or prompt_q.shape[1] > n_samples:
                raise ValueError(f"prompt_q must be (batch {batch_size}, <= {n_samples} samples), "
                                 f"got {tuple(prompt_q.shape)}")
            prompt_q = prompt_q.long().to(self._param().device)
        return codes, n_samples, batch_size, prompt_q

    def incremental(self, codes: Tensor | None = None, batch_size: int = 1,
                    fused: bool = False) -> "IncrementalDecoder":
        """A fresh incremental decoder at t = 0 (weights are packed now: call again after training).
        ``fused``: the compiled one-call-per-step ``FusedDecoder`` (needs numba, CPU, float32)."""
        codes = self._check_codes(codes)
        return self._decoder_class(fused)(self, codes, batch_size if codes is None else codes.shape[0])

    def _decoder_class(self, fused: bool) -> type:
        """The incremental decoder for this conditioning: per-code tables when it is constant
        inside a code, a per-sample product when the log-mel makes it vary; compiled with
        ``fused`` for the softmax output (the logistic mixture runs on torch ops)."""
        if self.config.logistic_components:  # the fused step only knows the softmax
            return _MixtureSampleDecoder if self.config.mel_conditioned else _MixtureDecoder
        if self.config.mel_conditioned:
            return FusedSampleConditionedDecoder if fused else SampleConditionedDecoder
        return FusedDecoder if fused else IncrementalDecoder

    @torch.no_grad()
    def generate(self, codes: Tensor | None = None, n_samples: int | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None, *, batch_size: int = 1,
                 prompt_q: Tensor | None = None, progress: bool = False, fused: bool | None = None) -> Tensor:
        """Sample audio with the incremental decoder; returns float audio (B, n_samples) in [-1, 1].

        codes: (B, N) or None (unconditioned; then ``batch_size`` clips). n_samples defaults to
        N * samples_per_code. temperature <= 0 picks the most likely class. ``generator`` (on
        the model's device) makes sampling reproducible. ``prompt_q`` (B, P) mu-law classes
        are teacher-forced as the first P samples (continuation); they are primed in one
        forward pass, not sample by sample. ``progress`` shows a tqdm bar in samples.

        Speed: ``fused`` (default: whenever numba is installed and the model is on the CPU in
        float32) runs each block of samples in one compiled call (fused.py). The torch
        decoder's step is ~150 tiny ops, so its cost is per-op overhead, nearly flat in the
        batch size: generate several clips at once; on CPU ``torch.set_num_threads(1)`` is
        usually fastest for it (intra-op threads only add synchronisation).
        """
        codes, n_samples, batch_size, prompt_q = self._generation_args(codes, n_samples, batch_size, prompt_q)
        if fused is None:
            fused = fused_available(self._param().device, self._param().dtype)
        decoder = self._decoder_class(fused)(self, codes, batch_size)
        out = []
        start = 0
        if prompt_q is not None and prompt_q.shape[1] > 0:
            decoder.prime(prompt_q)
            out = [prompt_q]
            start = prompt_q.shape[1]
        prev = out[-1][:, -1] if out else torch.full((batch_size,), self.silence_class, dtype=torch.long,
                                              device=self._param().device)
        sample = GumbelSampler(temperature, generator, (batch_size, self.config.n_classes), prev.device,
                          block=min(1024, n_samples - start))
        bar = _progress_bar(n_samples - start, progress)
        for t in range(start, n_samples, 4000):  # chunks of 1/4 s: the progress bar's ticks
            out.append(decoder.run(prev, min(4000, n_samples - t), sample))  # (B, chunk)
            prev = out[-1][:, -1]
            if bar is not None:
                bar.update(out[-1].shape[1])
        if bar is not None:
            bar.close()
        return mu_law_decode(torch.cat(out, dim=1), self.config.n_classes)  # (B, T)

    @torch.no_grad()
    def generate_naive(self, codes: Tensor | None = None, n_samples: int | None = None, temperature: float = 1.0,
                       generator: torch.Generator | None = None, *, batch_size: int = 1,
                       prompt_q: Tensor | None = None) -> Tensor:
        """Reference sampler: a full forward pass over the receptive-field window per sample.

        Same arguments and same random draws as ``generate``, so with the same generator seed
        both return the same audio. O(receptive field) per sample: for tests and benchmarks.
        """
        codes, n_samples, batch_size, prompt_q = self._generation_args(codes, n_samples, batch_size, prompt_q)
        device = self._param().device
        cond = self.upsample_conditioning(codes) if codes is not None else None  # (B, C, T)
        inputs = torch.full((batch_size, n_samples), self.silence_class, dtype=torch.long, device=device)
        out = torch.empty((batch_size, n_samples), dtype=torch.long, device=device)
        start = 0
        if prompt_q is not None and prompt_q.shape[1] > 0:
            start = prompt_q.shape[1]
            out[:, :start] = prompt_q
            inputs[:, 1:start + 1] = prompt_q[:, : n_samples - 1]
        rf = self.receptive_field
        sample = GumbelSampler(temperature, generator, (batch_size, self.config.n_classes), device,
                          block=min(1024, n_samples - start))
        for t in range(start, n_samples):
            lo = max(0, t - rf + 1)
            window_cond = cond[:, :, lo:t + 1] if cond is not None else None
            logits, _ = self._run_stack(inputs[:, lo:t + 1], window_cond)  # (B, n_classes, window)
            q = sample(self.class_logits(logits[:, :, -1]))
            out[:, t] = q
            if t + 1 < n_samples:
                inputs[:, t + 1] = q
        return mu_law_decode(out, self.config.n_classes)


class _MixtureDecoder(MixtureOutput, IncrementalDecoder):
    """The torch incremental decoder of a mixture-output model."""


class _MixtureSampleDecoder(MixtureOutput, SampleConditionedDecoder):
    """The torch per-sample-conditioning decoder of a mixture-output model."""


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar over generated samples, or None (no per-step cost when off)."""
    if not enabled:
        return None
    from tokenlm.core.progress import progress_bar

    return progress_bar(total=total, desc="wavenet", unit="sample", unit_scale=True)
