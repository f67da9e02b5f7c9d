"""WaveNet generation benchmark: naive (recompute the receptive field) vs incremental (ring buffers).

Both paths are timed per generated sample at steady state: the clip starts with a
teacher-forced prompt one receptive field long (primed in one forward pass, not timed), so
every timed naive step really recomputes a full 2047-sample window. The incremental cost
per step does not depend on t.

    python scripts/bench_wavenet.py                       # CPU, 2 threads, default config
    python scripts/bench_wavenet.py --device cuda         # GPU run
    python scripts/bench_wavenet.py --threads 1 --batch-sizes 1,8,32

Real-time factor (RTF) = seconds of compute to generate 1 s of audio, extrapolated from the
measured samples (it is linear in length). Timings on a shared machine are noisy: the load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenlm.models.wavenet import WaveNet, WaveNetConfig  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU (default: 2)")
    parser.add_argument("--naive-samples", type=int, default=200, help="samples timed on the naive path (default: 200)")
    parser.add_argument("--incremental-samples", type=int, default=4000,
                        help="samples timed on the incremental path, per batch size (default: 4000)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes for the RTF (default: 1,8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model: WaveNet, method: str, batch: int, n_timed: int, device: torch.device,
                    seed: int) -> float:
    """Seconds per generated step for ``batch`` clips, after a receptive-field-long prompt."""
    config = model.config
    prompt_len = config.receptive_field
    n_samples = prompt_len + n_timed
    gen = torch.Generator(device=device).manual_seed(seed)
    n_codes = math.ceil(n_samples / config.samples_per_code)
    codes = torch.randint(0, config.vocab_size, (batch, n_codes), device=device, generator=gen)
    prompt = torch.randint(0, config.n_classes, (batch, prompt_len), device=device, generator=gen)
    generate = getattr(model, method)
    # Warm-up: allocator, kernels, first-call paths (and untimed priming below).
    generate(codes, n_samples=prompt_len + min(20, n_timed), generator=gen, prompt_q=prompt)
    synchronize(device)
    # Time the priming alone so it can be subtracted: we want the cost per generated step.
    start = time.perf_counter()
    generate(codes, n_samples=prompt_len + 1, generator=gen, prompt_q=prompt)
    synchronize(device)
    overhead = time.perf_counter() - start
    start = time.perf_counter()
    audio = generate(codes, n_samples=n_samples, generator=gen, prompt_q=prompt)
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert audio.shape == (batch, n_samples)
    return max(elapsed - overhead, 1e-9) / (n_timed - 1)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = WaveNetConfig()
    model = WaveNet(config).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]

    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"load_avg={os.getloadavg()[0]:.1f} (figures are noisy on a shared machine)")
    print(f"config: {config.cycles}x{config.layers_per_cycle} layers, kernel {config.kernel_size}, "
          f"R={config.residual_channels} G={config.gate_channels} S={config.skip_channels}, "
          f"receptive field {config.receptive_field} samples, {n_params / 1e6:.2f} M parameters")

    with torch.inference_mode():
        naive = time_generation(model, "generate_naive", 1, args.naive_samples, device, args.seed)
        print(f"naive       batch 1: {naive * 1e3:8.3f} ms/sample  ({args.naive_samples} samples, "
              f"full {config.receptive_field}-sample window each)")
        per_step = {}
        for batch in batch_sizes:
            per_step[batch] = time_generation(model, "generate", batch, args.incremental_samples, device, args.seed)
            print(f"incremental batch {batch}: {per_step[batch] * 1e3:8.3f} ms/step    "
                  f"({args.incremental_samples} steps)")

    base = per_step.get(1)
    if base is not None:
        print(f"speed-up incremental vs naive (batch 1, per sample): {naive / base:.0f}x  (target >= 50x)")
    print(f"real-time factor (seconds of compute per 1 s of {config.sample_rate} Hz audio; < 1 is faster than real time):")
    for batch, seconds in per_step.items():
        rtf = seconds * config.sample_rate
        print(f"  batch {batch:3d}: {rtf:7.2f} s per batch  = {rtf / batch:6.2f} s per clip")
    print(f"  naive batch 1: {naive * config.sample_rate:7.1f} s per clip")


if __name__ == "__main__":
    main()
