"""Fast WaveNet sampling: the ring-buffer ``IncrementalDecoder`` and the Gumbel-max sampler.

Both generation paths of ``WaveNet`` (``generate`` and the reference ``generate_naive``)
draw with ``GumbelSampler``, so equal seeds give equal audio; only ``generate`` steps the
``IncrementalDecoder``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotation only: model.py imports this module
    from tokenlm.models.wavenet.model import WaveNet

__all__ = ["IncrementalDecoder", "GumbelSampler"]


class GumbelSampler:
    """Draws classes from logits with the Gumbel-max trick, noise drawn in blocks.

    argmax(logits / T + Gumbel noise) is a sample from softmax(logits / T); drawing the noise
    for many steps at once replaces a softmax + multinomial call per sample by one add and
    one argmax. Both generation paths use this class, so equal seeds give equal audio.
    """

    def __init__(self, temperature: float, generator: torch.Generator | None, shape: tuple[int, int],
                 device: torch.device, block: int = 1024):
        self.temperature = temperature
        self.generator = generator
        self.shape = shape  # (B, n_classes)
        self.device = device
        self.block = block
        self._noise: Tensor | None = None  # (block, B, n_classes), rows from _used on unused
        self._used = 0

    def __call__(self, logits: Tensor) -> Tensor:
        """Logits (B, n_classes) -> sampled classes (B,)."""
        if self.temperature <= 0:
            return logits.argmax(dim=1)
        if self._noise is None or self._used == len(self._noise):
            self._noise, self._used = self._gumbel(), 0
        noise = self._noise[self._used]
        self._used += 1
        scaled = logits if self.temperature == 1.0 else logits / self.temperature
        return (scaled + noise).argmax(dim=1)

    def take(self, n: int) -> Tensor:
        """The next ``n`` steps' Gumbel noise (n, B, n_classes), in the order __call__ uses it
        (the fused decoder samples inside its compiled loop with these)."""
        parts = []
        while n > 0:
            if self._noise is None or self._used == len(self._noise):
                self._noise, self._used = self._gumbel(), 0
            part = self._noise[self._used:self._used + n]
            self._used += len(part)
            n -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _gumbel(self) -> Tensor:
        u = torch.rand((self.block, *self.shape), generator=self.generator, device=self.device)
        # Clamp away from 0 so -log(-log(u)) stays finite.
        return -torch.log(-torch.log(u.clamp_(min=1e-20)))  # (block, B, n_classes)


class IncrementalDecoder:
    """Sample-by-sample WaveNet evaluation with per-layer ring buffers (fast WaveNet).

    Layer l with dilation d and kernel k needs its own inputs at t - d, ..., t - (k-1)d. All
    layers' past inputs live in one buffer ``history`` (slots, B, R): layer l owns
    (k-1)*d consecutive slots used as a ring. Because every needed value is from the *past*,
    one ``index_select`` fetches all layers' taps at the start of a step and one batched
    matmul applies all their past-tap weights; only the current-tap matmul, the gate and the
    residual 1x1 remain inside the (unavoidably sequential) per-layer loop. Skip 1x1 convs of
    all layers are fused into one matmul after the loop; conditioning is a per-code table.

    ``step(prev_q)`` consumes the previous sample and returns the logits for the current one,
    exactly ``model(audio_q, codes)[:, :, t]`` under teacher forcing.
    """

    def __init__(self, model: WaveNet, codes: Tensor | None, batch_size: int):
        cfg = model.config
        param = model._param()
        self.config = cfg
        self.device, self.dtype = param.device, param.dtype
        self.batch_size = batch_size
        self.t = 0
        self.n_layers = cfg.n_layers
        self.taps = cfg.kernel_size - 1  # past taps per layer
        self._model = model
        self._codes = codes
        with torch.no_grad():
            self._pack_weights(model)
            self._build_ring_tables(cfg.dilations)
            self._build_conditioning(model, codes)
        self.history = torch.zeros(self._n_slots, batch_size, cfg.residual_channels,
                                   device=self.device, dtype=self.dtype)  # (slots, B, R)

    # ----------------------------------------------------------------- setup

    def _pack_weights(self, model: WaveNet) -> None:
        """Re-lay the conv weights as (in, out) matrices for addmm on (B, in) rows."""
        k = self.config.kernel_size
        layers = list(model.layers)
        self.input_table = model.input_embedding.weight.detach()  # (n_classes, R)
        # Tap index k-1 multiplies the current input; tap k-1-j the input j*d samples back.
        self.w_current = [layer.dilated.weight[:, :, k - 1].t().contiguous() for layer in layers]  # L x (R, G)
        past = [torch.cat([layer.dilated.weight[:, :, k - 1 - j].t() for j in range(1, k)], dim=0)
                for layer in layers]  # L x ((k-1)R, G)
        self.w_past = torch.stack(past).contiguous()  # (L, (k-1)R, G)
        self.b_dilated = torch.stack([layer.dilated.bias for layer in layers]).unsqueeze(1)  # (L, 1, G)
        # Biases pre-expanded to (B, out): addmm then skips a broadcast per call.
        rows = self.batch_size
        self.w_residual = [layer.residual.weight[:, :, 0].t().contiguous() for layer in layers[:-1]]  # (G/2, R)
        self.b_residual = [_rows(layer.residual.bias, rows) for layer in layers[:-1]]  # (B, R)
        self.w_skip = torch.cat([layer.skip.weight[:, :, 0].t() for layer in layers], dim=0).contiguous()  # (L*G/2, S)
        self.b_skip = _rows(torch.stack([layer.skip.bias for layer in layers]).sum(0), rows)  # (B, S)
        self.w_hidden = model.output_hidden.weight[:, :, 0].t().contiguous()  # (S, S)
        self.b_hidden = _rows(model.output_hidden.bias, rows)
        self.w_logits = model.output_logits.weight[:, :, 0].t().contiguous()  # (S, n_classes)
        self.b_logits = _rows(model.output_logits.bias, rows)

    def _build_ring_tables(self, dilations: list[int]) -> None:
        """Read/write slot indices per time step, periodic in t with the lcm of ring sizes."""
        taps = self.taps
        sizes = [taps * d for d in dilations]
        bases = [sum(sizes[:i]) for i in range(len(sizes))]
        self._n_slots = sum(sizes)
        period = math.lcm(*sizes)
        t = torch.arange(period).unsqueeze(1)  # (P, 1)
        read = [bases[i] + (t - j * d) % sizes[i] for i, d in enumerate(dilations) for j in range(1, taps + 1)]
        write = [bases[i] + t % sizes[i] for i in range(len(dilations))]
        self._period = period
        self._read_table = torch.cat(read, dim=1).to(self.device)  # (P, L*taps), layer-major
        self._write_table = torch.cat(write, dim=1).to(self.device)  # (P, L)
        self._sizes, self._bases = sizes, bases

    def _build_conditioning(self, model: WaveNet, codes: Tensor | None) -> None:
        """Per-code and per-phase gate contributions, so a step only looks them up."""
        bias = self.b_dilated  # (L, 1, G)
        self._code_gate = None
        if codes is None:
            self._phase_gate = bias.unsqueeze(0)  # (1, L, 1, G): constant in time
            return
        w_cond = torch.stack([layer.cond.weight[:, :, 0] for layer in model.layers])  # (L, G, C)
        per_code = model._code_features(codes)  # (B, C, N)
        # 1x1 convs are linear, so projecting per code then repeating equals repeating then
        # projecting: N lookups instead of N * samples_per_code projections.
        self._code_gate = torch.einsum("bcn,lgc->nlbg", per_code, w_cond).contiguous()  # (N, L, B, G)
        phase = torch.einsum("cp,lgc->plg", model.code_phase, w_cond).unsqueeze(2)  # (spc, L, 1, G)
        self._phase_gate = (phase + bias).contiguous()

    def _gate_bias(self, t: int) -> Tensor:
        """Everything added to layer gates at time t besides the inputs: (L, B or 1, G)."""
        if self._code_gate is None:
            return self._phase_gate[0]
        spc = self.config.samples_per_code
        code_index = t // spc
        if code_index >= self._code_gate.shape[0]:
            raise IndexError(f"step {t} is past the end of the codes ({self._code_gate.shape[0]} codes x {spc})")
        return self._code_gate[code_index] + self._phase_gate[t % spc]

    def _gate_bias_block(self, t: int, n: int) -> Tensor:
        """``_gate_bias`` for times t .. t+n-1 at once: (n or 1, L, B or 1, G), contiguous
        (what the fused decoder reads per block of samples)."""
        if self._code_gate is None:
            return self._phase_gate[:1]  # constant in time
        spc = self.config.samples_per_code
        if (t + n - 1) // spc >= self._code_gate.shape[0]:
            raise IndexError(f"step {t + n - 1} is past the end of the codes "
                             f"({self._code_gate.shape[0]} codes x {spc})")
        times = torch.arange(t, t + n, device=self.device)
        return self._code_gate[times // spc] + self._phase_gate[times % spc]

    # ----------------------------------------------------------------- running

    @torch.no_grad()
    def step(self, prev_q: Tensor) -> Tensor:
        """Previous sample's classes (B,) -> logits for sample t (B, n_classes); advances t."""
        t = self.t
        L, taps, B = self.n_layers, self.taps, self.batch_size
        row = t % self._period
        x = F.embedding(prev_q, self.input_table)  # (B, R)
        past = self.history.index_select(0, self._read_table[row])  # (L*taps, B, R)
        if taps == 1:
            past = past.view(L, B, -1)
        else:
            past = past.view(L, taps, B, -1).permute(0, 2, 1, 3).reshape(L, B, -1)  # (L, B, taps*R)
        pre = torch.baddbmm(self._gate_bias(t), past, self.w_past).unbind(0)  # L x (B, G)
        inputs, gated = [], []
        w_current, w_residual, b_residual = self.w_current, self.w_residual, self.b_residual
        last = L - 1
        for i in range(L):
            inputs.append(x)
            filt, gate = torch.addmm(pre[i], x, w_current[i]).chunk(2, dim=1)
            z = torch.tanh(filt).mul_(torch.sigmoid(gate))  # (B, G/2)
            gated.append(z)
            if i < last:
                x = torch.addmm(b_residual[i], z, w_residual[i]).add_(x)  # (B, R)
        self.history.index_copy_(0, self._write_table[row], torch.stack(inputs))
        skip = torch.addmm(self.b_skip, torch.cat(gated, dim=1), self.w_skip).relu_()  # (B, S)
        hidden = torch.addmm(self.b_hidden, skip, self.w_hidden).relu_()
        self.t = t + 1
        return torch.addmm(self.b_logits, hidden, self.w_logits)  # (B, n_classes)

    @torch.no_grad()
    def run(self, prev_q: Tensor, n: int, sample: GumbelSampler) -> Tensor:
        """Generate ``n`` samples after ``prev_q`` (B,), one ``step`` + ``sample`` each:
        classes (B, n); advances t by n."""
        out = []
        for _ in range(n):
            prev_q = sample(self.step(prev_q))
            out.append(prev_q)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def prime(self, prompt_q: Tensor) -> None:
        """Teacher-force a prompt (B, P) of mu-law classes from t = 0 in one forward pass.

        Afterwards t = P and the next ``step`` takes prompt_q[:, -1] as its previous sample.
        """
        if self.t != 0:
            raise RuntimeError("prime() must be called on a fresh decoder (t = 0)")
        model, n_prompt = self._model, prompt_q.shape[1]
        cond = None
        if self._codes is not None:
            cond = model.upsample_conditioning(self._codes)[:, :, :n_prompt]  # (B, C, P)
        inputs = model.shift_right(prompt_q.long())  # (B, P)
        _, tails = model._run_stack(inputs, cond, keep_last=self._sizes)
        for i, tail in enumerate(tails):  # tail: (B, R, <= size)
            times = torch.arange(n_prompt - tail.shape[2], n_prompt, device=self.device)
            slots = self._bases[i] + times % self._sizes[i]
            self.history.index_copy_(0, slots, tail.permute(2, 0, 1).to(self.dtype))
        self.t = n_prompt


def _rows(bias: Tensor, rows: int) -> Tensor:
    """Bias (out,) -> a detached contiguous (rows, out) copy."""
    return bias.detach().unsqueeze(0).expand(rows, -1).contiguous()
