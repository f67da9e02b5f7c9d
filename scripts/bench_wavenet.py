"""WaveNet generation benchmark: naive vs torch incremental vs fused (numba) incremental step.

Every path is timed per generated step at steady state: the clip starts with a teacher-forced
prompt one receptive field long (primed in one forward pass, not timed), so every timed naive
step really recomputes a full receptive-field window. Incremental cost per step does not
depend on t.

    python scripts/bench_wavenet.py                         # demo and default models, batch 1 and 8
    python scripts/bench_wavenet.py --models default --batch-sizes 1,8,32
    python scripts/bench_wavenet.py --vocoder runs/demo/vocoder   # the config of a trained vocoder
    python scripts/bench_wavenet.py --device cuda           # torch paths on a GPU (no fused path)

The demo model is the ``vocoder`` section of recipes/demo.yaml on the demo tokenizer's codes
(conditioned on their decoded log-mel, LPC order 32, as the vocoder stage builds it); the
default model is WaveNetConfig's defaults (2 x 10 layers, 64/128/128 channels, codes only).
Per clip, the work outside the sample loop (the conditioning network, the LPC synthesis of
the sampled excitation) is timed apart and printed under each table.

Real-time factor (RTF) = seconds of compute to generate 1 s of audio (< 1: faster than real
time), per batch and per clip, extrapolated from the measured steps (it is linear in length).
Wall time is what the targets are about; on a shared machine the process's CPU time is
printed too (it is what the same run costs on an idle core), with the load average.
The arithmetic per step (matrix products only) over the time gives the FLOP/s reached,
against the peak of one big fp32 matmul with the same number of threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import tokenlm  # noqa: E402,F401  first: sets OpenMP's passive waiting before torch loads it
from tokenlm.core.config import build, recipe_section  # noqa: E402
from tokenlm.data.features import FeatureConfig  # noqa: E402
from tokenlm.models.wavenet import WaveNet, WaveNetConfig  # noqa: E402
from tokenlm.models.wavenet.fused import fused_available  # noqa: E402
from tokenlm.pipeline.vocoder import vocoder_config  # noqa: E402
from tokenlm.vocoder.vocoder import lpc  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default: 1; "
                        "the fused step runs on one thread)")
    parser.add_argument("--models", default="demo,default", help="comma-separated: demo (recipes/demo.yaml), "
                        "default (WaveNetConfig()) (default: demo,default)")
    parser.add_argument("--vocoder", help="time the WaveNetConfig of a trained vocoder folder (RUN/vocoder) instead")
    parser.add_argument("--naive-samples", type=int, default=20, help="samples timed on the naive path (default: 20)")
    parser.add_argument("--samples", type=int, default=4000,
                        help="steps timed on each incremental path, per batch size (default: 4000)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model: WaveNet, path: str, batch: int, n_timed: int, device: torch.device,
                    seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds per generated step for ``batch`` clips, after a receptive-field-long
    prompt. ``path``: naive, torch or fused."""
    config = model.config
    prompt_len = config.receptive_field
    n_samples = prompt_len + n_timed
    gen = torch.Generator(device=device).manual_seed(seed)
    n_codes = math.ceil(n_samples / config.samples_per_code)
    codes = torch.randint(0, config.codebook_size, (batch, n_codes), device=device, generator=gen)
    prompt = torch.randint(0, config.n_classes, (batch, prompt_len), device=device, generator=gen)
    if path == "naive":
        generate = model.generate_naive
    else:
        def generate(*args, **kwargs):
            return model.generate(*args, fused=path == "fused", **kwargs)

    def timed(n: int) -> tuple[float, float]:
        synchronize(device)
        cpu, wall = time.process_time(), time.perf_counter()
        audio = generate(codes, n_samples=n, generator=gen, prompt_q=prompt)
        synchronize(device)
        assert audio.shape == (batch, n)
        return time.perf_counter() - wall, time.process_time() - cpu

    timed(prompt_len + min(20, n_timed))  # warm-up: allocator, kernels, compilation, first-call paths
    overhead = timed(prompt_len + 1)  # the priming alone, subtracted: we want the cost per step
    total = timed(n_samples)
    # If the machine got busier between the two timings, report the upper bound.
    return tuple((t - o if t > o else t) / (n_timed - 1) for t, o in zip(total, overhead))


def step_flops(config: WaveNetConfig, batch: int) -> float:
    """Multiply-adds x 2 of one incremental step for ``batch`` clips (matrix products only).
    With the decoded log-mel, every step also projects its conditioning column into every
    layer's gate (C x G per layer); code-only conditioning is a per-code table (not counted)."""
    r, g, s, k = config.residual_channels, config.gate_channels, config.skip_channels, config.kernel_size
    per_layer = k * r * g + (g // 2) * r + (g // 2) * s  # dilated taps, residual, skip
    if config.mel_conditioned:
        per_layer += config.cond_channels * g
    return 2.0 * batch * (config.n_layers * per_layer + s * s + s * config.n_classes)


def per_clip_extras(model: WaveNet, seconds: float = 2.0) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per second of audio of the work outside the sample loop, per clip:
    the conditioning network (codes -> per-sample features; the bench's per-step figures leave
    it out with the priming) and, with ``lpc_order``, the LPC synthesis the Vocoder runs on
    the sampled excitation (tokenlm.vocoder.lpc, after generation, not per step)."""
    config = model.config
    n_codes = max(1, round(seconds * config.sample_rate / config.samples_per_code))
    codes = torch.randint(0, config.codebook_size, (1, n_codes), generator=torch.Generator().manual_seed(0))
    audio_seconds = n_codes * config.samples_per_code / config.sample_rate

    def per_second(fn) -> tuple[float, float]:
        fn()  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        return (time.perf_counter() - wall) / audio_seconds, (time.process_time() - cpu) / audio_seconds

    extras = {"conditioning network": per_second(lambda: model.upsample_conditioning(codes))}
    if config.lpc_order:
        # a stable predictor (one pole at 0.9) in every frame: lfilter's cost does not depend on it
        frames = np.zeros((n_codes * config.frames_per_code, config.lpc_order + 1), np.float32)
        frames[:, 0], frames[:, -1] = -0.9, 0.01
        excitation = np.random.default_rng(0).uniform(-1, 1, n_codes * config.samples_per_code).astype(np.float32)
        hop = config.samples_per_code // config.frames_per_code
        extras[f"LPC synthesis (order {config.lpc_order})"] = per_second(
            lambda: lpc.synthesise(excitation, frames, hop))
    return extras


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """FLOP/s of a big fp32 matmul (size x size) on the current threads, the arithmetic peak:
    (per wall second, per CPU second)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    synchronize(device)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    synchronize(device)
    flops = 2.0 * size**3 * repeats
    return flops / (time.perf_counter() - wall), flops / max(time.process_time() - cpu, 1e-9)


def demo_config() -> WaveNetConfig:
    """The demo run's vocoder: recipes/demo.yaml's vocoder section on its tokenizer's codes,
    with what the vocoder stage derives from them (codebook size, samples per code, the
    decoded log-mel's bins and frames per code)."""
    recipe = REPO / "recipes" / "demo.yaml"
    features = build(FeatureConfig, recipe_section(recipe, "features"))
    codebook_size = recipe_section(recipe, "tokenizer").get("codebook_size", 256)
    return vocoder_config(recipe).wavenet(codebook_size, features.samples_per_code, features.sample_rate,
                                          mel_bins=features.n_mels, frames_per_code=features.patch_step)


def load_configs(args) -> dict[str, WaveNetConfig]:
    if args.vocoder:
        config_file = Path(args.vocoder) / "config.json"
        if not config_file.is_file():
            sys.exit(f"error: no vocoder config at {config_file}")
        return {args.vocoder: WaveNetConfig.from_dict(json.loads(config_file.read_text())["wavenet"])}
    known = {"demo": demo_config, "default": WaveNetConfig}
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        sys.exit(f"error: unknown model(s) {unknown}: choose from {sorted(known)}")
    return {name: known[name]() for name in names}


def bench(name: str, config: WaveNetConfig, args, device: torch.device, peak: tuple[float, float]) -> None:
    torch.manual_seed(args.seed)
    model = WaveNet(config).to(device).eval()
    if config.mel_conditioned:  # a random decoded log-mel: the cost does not depend on it
        model.set_code_mel(torch.randn(config.codebook_size, config.frames_per_code * config.mel_bins))
    n_params = sum(p.numel() for p in model.parameters())
    conditioning = (f"codes + decoded log-mel ({config.mel_bins} bins x {config.frames_per_code} frames per code)"
                    if config.mel_conditioned else "codes" if config.conditioned else "none")
    print(f"\n== {name} model: {config.cycles}x{config.layers_per_cycle} layers, kernel {config.kernel_size}, "
          f"R={config.residual_channels} G={config.gate_channels} S={config.skip_channels} C={config.cond_channels}, "
          f"receptive field {config.receptive_field}, {n_params / 1e6:.2f} M parameters, "
          f"{step_flops(config, 1) / 1e6:.2f} MFLOP per sample, {config.sample_rate} Hz, "
          f"{config.samples_per_code} samples per code; conditioning: {conditioning}; LPC order {config.lpc_order}")
    paths = ["torch"] + (["fused"] if fused_available(device) else [])
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    print(f"{'path':6s} {'batch':>5s} {'wall ms/step':>12s} {'CPU ms/step':>11s} {'RTF/clip':>8s} "
          f"{'CPU RTF/clip':>12s} {'GFLOP/s':>8s} {'of peak':>7s} {'per CPU s':>9s} {'of peak':>7s}  load")
    rows = [("naive", 1, args.naive_samples)] + [(p, b, args.samples) for p in paths for b in batch_sizes]
    for path, batch, n_timed in rows:
        wall, cpu = time_generation(model, path, batch, n_timed, device, args.seed)
        rtf, cpu_rtf = wall * config.sample_rate, cpu * config.sample_rate
        flops, cpu_flops = step_flops(config, batch) / wall, step_flops(config, batch) / max(cpu, 1e-12)
        print(f"{path:6s} {batch:5d} {wall * 1e3:12.3f} {cpu * 1e3:11.3f} {rtf / batch:8.2f} {cpu_rtf / batch:12.2f} "
              f"{flops / 1e9:8.2f} {100 * flops / peak[0]:6.1f}% {cpu_flops / 1e9:9.2f} {100 * cpu_flops / peak[1]:6.1f}%"
              f"  {os.getloadavg()[0]:.1f}", flush=True)
    if config.conditioned and device.type == "cpu":
        extras = per_clip_extras(model)
        print("per clip, outside the sample loop (add to RTF/clip): " + "; ".join(
            f"{what} {wall:.3f} s wall / {cpu:.3f} s CPU per s of audio" for what, (wall, cpu) in extras.items()))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        peak = matmul_peak(device)
    print(f"device={device} torch={torch.__version__} threads={args.threads} cores={os.cpu_count()} "
          f"load_avg={os.getloadavg()[0]:.1f} (figures are noisy on a shared machine)")
    print(f"matmul peak (2048^3 fp32, {args.threads} thread(s)): {peak[0] / 1e9:.1f} GFLOP/s, "
          f"{peak[1] / 1e9:.1f} per CPU second; fused step: "
          f"{'numba, one call per block of samples' if fused_available(device) else 'not available here'}")
    print("RTF = seconds of compute per second of audio (< 1: faster than real time); CPU RTF: the "
          "process's CPU time, what the run costs on an idle core")
    with torch.inference_mode():
        for name, config in load_configs(args).items():
            bench(name, config, args, device, peak)
    print("\ntargets: demo fused batch 1 RTF/clip < 1; default fused batch 1 RTF/clip <= 1.5 and batch 8 "
          "RTF/clip < 1")


if __name__ == "__main__":
    main()
