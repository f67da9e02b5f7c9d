"""The fused incremental WaveNet step: every layer of one sample in one compiled call (numba).

``IncrementalDecoder.step`` dispatches ~150 tiny torch operations per sample; at a few
microseconds each, the per-operation overhead, not the arithmetic, sets the speed of
generation. ``FusedDecoder`` runs the same ring-buffer algorithm (same packed weights, same
buffers) as plain loops compiled once by numba, over preallocated arrays: one call per sample
(``step``) or, for generation, one call per block of samples with the Gumbel-max sampling
inside (``run``). The loops are written so the innermost one runs over contiguous output
channels (SIMD-friendly axpy), layer by layer, so a layer's weights stay in cache across the
clips of a batch.

The kernel takes the conditioning as each block's gate biases (n, L, B, G), computed by the
torch decoder it extends: per-code tables (``FusedDecoder``, codes only) or one product of the
block's per-sample conditioning with every layer's 1x1 weights
(``FusedSampleConditionedDecoder``, decoded log-mel), so both conditionings run fused.

numba is optional (``pip install tokenlm[fast]``): without it ``fused_available()`` is False
and generation uses the torch ``IncrementalDecoder``.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import torch
from torch import Tensor

from tokenlm.models.wavenet.conditioning import SampleConditionedDecoder
from tokenlm.models.wavenet.incremental import GumbelSampler, IncrementalDecoder

# numba is imported (and the kernel compiled, or loaded from numba's cache) on first use only:
# importing it costs about a second that commands which never generate audio should not pay.
HAS_NUMBA = importlib.util.find_spec("numba") is not None

__all__ = ["FusedDecoder", "FusedSampleConditionedDecoder", "fused_available"]


def fused_available(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused step can run here: numba installed, weights on the CPU in float32."""
    return HAS_NUMBA and torch.device(device).type == "cpu" and dtype == torch.float32


class FusedDecoder(IncrementalDecoder):
    """``IncrementalDecoder`` whose step is one compiled call; same results within float32
    rounding (different summation order), same ``prime``, same ring buffers."""

    def __init__(self, model, codes: Tensor | None, batch_size: int):
        if not fused_available(model._param().device, model._param().dtype):
            raise RuntimeError("the fused WaveNet step needs numba and a float32 model on the CPU")
        super().__init__(model, codes, batch_size)
        half = self.config.gate_channels // 2

        def array(tensor: Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

        residual = self.w_residual or [torch.zeros(half, self.config.residual_channels)]  # one layer: unused
        self._weights = (
            array(self.input_table),                                     # (n_classes, R)
            array(torch.stack(self.w_current)),                          # (L, R, G)
            array(self.w_past),                                          # (L, taps*R, G)
            array(torch.stack(residual)),                                # (L-1, G/2, R)
            array(torch.stack([b[0] for b in self.b_residual] or [torch.zeros(self.config.residual_channels)])),
            array(self.w_skip), array(self.b_skip[0]),                   # (L*G/2, S), (S,)
            array(self.w_hidden), array(self.b_hidden[0]),               # (S, S), (S,)
            array(self.w_logits), array(self.b_logits[0]),               # (S, n_classes), (S,)
        )
        self._history = self.history.numpy()  # shares memory: prime() fills it for us
        self._reads = self._read_table.numpy().astype(np.int64)  # (period, L*taps)
        self._writes = self._write_table.numpy().astype(np.int64)  # (period, L)
        b, cfg = batch_size, self.config
        exp_bits = np.empty(cfg.gate_channels, np.int32)  # 2**k of each exponential, as bits
        self._scratch = (np.empty((b, cfg.residual_channels), np.float32),  # layer input x
                         np.empty((b, cfg.gate_channels), np.float32),  # pre-activations
                         np.empty((b, half), np.float32),  # gated output of one layer
                         np.empty((b, cfg.skip_channels), np.float32),  # skip sum
                         np.empty(cfg.skip_channels, np.float32),  # hidden of one clip
                         np.empty(cfg.gate_channels, np.float32),  # exponentials of one clip
                         exp_bits, exp_bits.view(np.float32))

    def _steps(self, prev: np.ndarray, n: int, sampling: bool, noise: np.ndarray, temperature: float,
               out: np.ndarray, logits: np.ndarray) -> None:
        """``n`` steps of the kernel from time t (see ``_run_steps``); advances t."""
        gate_bias = self._gate_bias_block(self.t, n).numpy()  # (n or 1, L, B or 1, G), contiguous
        _compiled()(prev, self.t, n, gate_bias, self._history, self._reads, self._writes,
                    *self._weights, *self._scratch, sampling, noise, temperature, out, logits)
        self.t += n

    @torch.no_grad()
    def step(self, prev_q: Tensor) -> Tensor:
        """Previous sample's classes (B,) -> logits for sample t (B, n_classes); advances t."""
        logits = np.empty((self.batch_size, self.config.n_classes), np.float32)
        prev = np.array(prev_q.cpu().numpy(), dtype=np.int64)
        self._steps(prev, 1, False, _NO_NOISE, 0.0, np.empty((1, self.batch_size), np.int64), logits)
        return torch.from_numpy(logits)

    @torch.no_grad()
    def run(self, prev_q: Tensor, n: int, sample: GumbelSampler, block: int = 256) -> Tensor:
        """Generate ``n`` samples after ``prev_q`` (B,): classes (B, n); advances t by n.

        The same draws as stepping and calling ``sample`` once per step: the Gumbel noise
        is taken from ``sample`` in order, and argmax(logits / T + noise) happens inside."""
        out = np.empty((n, self.batch_size), np.int64)
        logits = np.empty((self.batch_size, self.config.n_classes), np.float32)
        prev = np.array(prev_q.cpu().numpy(), dtype=np.int64)  # a copy: the kernel writes it
        for start in range(0, n, block):
            size = min(block, n - start)
            noise = sample.take(size).numpy() if sample.temperature > 0 else _NO_NOISE
            self._steps(prev, size, True, noise, max(float(sample.temperature), 0.0), out[start:start + size], logits)
        return torch.from_numpy(out.T.copy())


class FusedSampleConditionedDecoder(FusedDecoder, SampleConditionedDecoder):
    """``FusedDecoder`` for conditioning that varies inside a code (the decoded log-mel): the
    gate biases of each block of samples come from ``SampleConditionedDecoder`` (one product
    of the block's conditioning columns with every layer's 1x1 weights), the rest is the
    same kernel."""


_NO_NOISE = np.empty((0, 0, 0), np.float32)


@functools.cache
def _compiled():
    """The numba kernel (compiled once per process, or loaded from numba's on-disk cache)."""
    global _exp_in_place  # numba resolves the kernel's callee by name when it compiles
    import numba

    jit = numba.njit(cache=True, fastmath={"contract"}, boundscheck=False)
    _exp_in_place = jit(_exp_in_place)
    return jit(_run_steps)


# exp(v) = 2**k * exp(r) with k = round(v / ln 2) and |r| <= ln(2) / 2, ln 2 split in two so
# that k * LN2_HIGH is exact; exp(r) by its Taylor series to r**7 (error < 1e-8, relative).
LOG2_E = np.float32(1.4426950408889634)
LN2_HIGH, LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
EXP_MIN, EXP_MAX = np.float32(-87.0), np.float32(88.0)  # 2**k stays a normal float32
TAYLOR = tuple(np.float32(1.0 / math.factorial(i)) for i in range(8))


def _exp_in_place(values, bits, scale):
    """values <- exp(values) in float32, within 1 ulp (measured over [-87, 88]). Plain
    arithmetic instead of a libm call per element, so the loops vectorise; ``scale`` is
    ``bits`` viewed as float32: 2**k is built from its exponent bits without a scalar bit cast."""
    c0, c1, c2, c3, c4, c5, c6, c7 = TAYLOR
    for g in range(values.shape[0]):
        v = min(max(values[g], EXP_MIN), EXP_MAX)
        k = math.floor(v * LOG2_E + np.float32(0.5))
        r = v - k * LN2_HIGH - k * LN2_LOW
        values[g] = c0 + r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        bits[g] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for g in range(values.shape[0]):
        values[g] *= scale[g]


def _run_steps(prev, t0, n, gate_bias, history, reads, writes,
               input_table, w_current, w_past, w_residual, b_residual, w_skip, b_skip, w_hidden, b_hidden,
               w_logits, b_logits, x, pre, z, skip, hidden, exps, exp_bits, exp_scale,
               sampling, noise, temperature, out, logits):
    """``n`` steps from time ``t0``; the last step's logits (B, n_classes) are left in ``logits``.

    Each step takes the classes in ``prev`` (B,) as the previous samples. With ``sampling``,
    step k then draws argmax(logits / temperature + noise[k]) (argmax of the logits at
    temperature 0, ``noise`` unused) into ``out[k]`` and ``prev``, as GumbelSampler does;
    without, n must be 1 (one teacher-forced step) and ``out`` is unused."""
    n_layers, n_rows, gates = w_current.shape
    batch, half = z.shape
    taps = w_past.shape[1] // n_rows
    n_skip, n_classes = w_logits.shape
    period = reads.shape[0]
    zero, one, two = np.float32(0.0), np.float32(1.0), np.float32(2.0)  # float32: no float64 arithmetic
    for k in range(n):
        row = (t0 + k) % period
        bias_t = gate_bias[k if gate_bias.shape[0] > 1 else 0]  # (L, B or 1, G)
        for b in range(batch):
            x[b, :] = input_table[prev[b]]
            skip[b, :] = b_skip
        for i in range(n_layers):  # layer-major, clip-minor: a layer's weights serve every clip
            for b in range(batch):
                pre[b, :] = bias_t[i, b if bias_t.shape[1] > 1 else 0]
            for j in range(taps):  # past taps: read before this layer's slot is overwritten
                slot = reads[row, i * taps + j]
                for r in range(n_rows):
                    for b in range(batch):
                        v = history[slot, b, r]
                        for g in range(gates):
                            pre[b, g] += v * w_past[i, j * n_rows + r, g]
            for r in range(n_rows):
                for b in range(batch):
                    v = x[b, r]
                    for g in range(gates):
                        pre[b, g] += v * w_current[i, r, g]
            for b in range(batch):
                # z = tanh(f) * sigmoid(g) = (1 - 2 / (exp(2f) + 1)) / (1 + exp(-g))
                for h in range(half):
                    exps[h] = two * pre[b, h]
                    exps[half + h] = -pre[b, half + h]
                _exp_in_place(exps, exp_bits, exp_scale)
                for h in range(half):
                    z[b, h] = (one - two / (exps[h] + one)) / (one + exps[half + h])
                history[writes[row, i], b, :] = x[b, :]
            for h in range(half):
                for b in range(batch):
                    v = z[b, h]
                    for s in range(n_skip):
                        skip[b, s] += v * w_skip[i * half + h, s]
            if i < n_layers - 1:
                for b in range(batch):
                    x[b, :] += b_residual[i]
                for h in range(half):
                    for b in range(batch):
                        v = z[b, h]
                        for r in range(n_rows):
                            x[b, r] += v * w_residual[i, h, r]
        for b in range(batch):
            hidden[:] = b_hidden
            for s in range(n_skip):
                v = max(skip[b, s], zero)
                for c in range(n_skip):
                    hidden[c] += v * w_hidden[s, c]
            logits[b, :] = b_logits
            for s in range(n_skip):
                v = max(hidden[s], zero)
                for c in range(n_classes):
                    logits[b, c] += v * w_logits[s, c]
            if sampling:
                best, best_value = 0, -np.inf
                for c in range(n_classes):
                    value = logits[b, c]
                    if temperature > 0.0:
                        if temperature != 1.0:  # torch's float32 logits / T, rounded the same
                            value = np.float32(value / temperature)
                        value = value + noise[k, b, c]
                    if value > best_value:
                        best, best_value = c, value
                out[k, b] = best
                prev[b] = best
