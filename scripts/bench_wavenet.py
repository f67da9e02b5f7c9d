"""WaveNet generation benchmark: naive (recompute the receptive field) vs incremental (ring buffers).

Both paths are timed per generated sample at steady state: the clip starts with a
teacher-forced prompt one receptive field long (primed in one forward pass, not timed), so
every timed naive step really recomputes a full 2047-sample window. The incremental cost
per step does not depend on t.

    python scripts/bench_wavenet.py                       # CPU, 1 and 2 threads, default config
    python scripts/bench_wavenet.py --device cuda         # GPU run
    python scripts/bench_wavenet.py --threads 1 --batch-sizes 1,8,32
    python scripts/bench_wavenet.py --vocoder runs/demo/vocoder   # the config of a trained vocoder

Real-time factor (RTF) = seconds of compute to generate 1 s of audio, extrapolated from the
measured samples (it is linear in length). Timings on a shared machine are noisy: the load
average is printed with the figures.

What limits the RTF: the last block counts the torch operations one incremental step runs
and times one tiny operation; their product predicts the step time from per-operation
overhead alone, and the arithmetic actually done per step (GFLOP/s) shows how far from
compute-bound generation is.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--threads", default="1,2", help="comma-separated torch intra-op thread counts on CPU "
                        "(default: 1,2)")
    parser.add_argument("--vocoder", help="time the WaveNetConfig of a trained vocoder folder (RUN/vocoder) "
                        "instead of the default config")
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
    codes = torch.randint(0, config.codebook_size, (batch, n_codes), device=device, generator=gen)
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
    if elapsed <= overhead:  # the machine got busier between the two timings: report the upper bound
        return elapsed / (n_timed - 1)
    return (elapsed - overhead) / (n_timed - 1)


def step_flops(config: WaveNetConfig, batch: int) -> float:
    """Multiply-adds x 2 of one incremental step for ``batch`` clips (matrix products only)."""
    r, g, s, k = config.residual_channels, config.gate_channels, config.skip_channels, config.kernel_size
    per_layer = k * r * g + (g // 2) * r + (g // 2) * s  # dilated taps, residual, skip
    return 2.0 * batch * (config.n_layers * per_layer + s * s + s * config.n_classes)


def ops_per_step(model: WaveNet, batch: int, device: torch.device) -> int:
    """torch operations dispatched by one IncrementalDecoder.step (counted, not estimated)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    codes = torch.zeros(batch, 2, dtype=torch.long, device=device) if model.config.conditioned else None
    decoder = model.incremental(codes, batch_size=batch)
    prev = torch.full((batch,), model.silence_class, dtype=torch.long, device=device)
    decoder.step(prev)  # first-call paths out of the way
    with Count():
        decoder.step(prev)
    return Count.n


def tiny_op_seconds(device: torch.device, repeats: int = 20000) -> float:
    """Seconds per small addmm (1 x 64 @ 64 x 128): the dispatcher + kernel launch floor."""
    a = torch.randn(1, 64, device=device)
    w = torch.randn(64, 128, device=device)
    b = torch.randn(1, 128, device=device)
    for _ in range(200):
        torch.addmm(b, a, w)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.addmm(b, a, w)
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def load_config(path: str | None) -> WaveNetConfig:
    if not path:
        return WaveNetConfig()
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        sys.exit(f"error: no vocoder config at {config_file}")
    return WaveNetConfig.from_dict(json.loads(config_file.read_text())["wavenet"])


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    config = load_config(args.vocoder)
    model = WaveNet(config).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()] if device.type == "cpu" else [None]

    print(f"device={device} torch={torch.__version__} load_avg={os.getloadavg()[0]:.1f} "
          f"cores={os.cpu_count()} (figures are noisy on a shared machine)")
    print(f"config{' of ' + args.vocoder if args.vocoder else ''}: {config.cycles}x{config.layers_per_cycle} layers, "
          f"kernel {config.kernel_size}, R={config.residual_channels} G={config.gate_channels} "
          f"S={config.skip_channels}, receptive field {config.receptive_field} samples, "
          f"{n_params / 1e6:.2f} M parameters, {config.sample_rate} Hz")

    per_step = {}
    naive = None
    with torch.inference_mode():
        for threads in thread_counts:
            if threads is not None:
                torch.set_num_threads(threads)
            label = f"threads={threads}" if threads is not None else str(device)
            if naive is None:  # once: it is only the reference for the speed-up
                naive = time_generation(model, "generate_naive", 1, args.naive_samples, device, args.seed)
                print(f"[{label}] naive       batch 1: {naive * 1e3:8.3f} ms/sample  ({args.naive_samples} "
                      f"samples, full {config.receptive_field}-sample window each)")
            for batch in batch_sizes:
                seconds = time_generation(model, "generate", batch, args.incremental_samples, device, args.seed)
                per_step[threads, batch] = seconds
                print(f"[{label}] incremental batch {batch}: {seconds * 1e3:8.3f} ms/step    "
                      f"({args.incremental_samples} steps)")

    first = thread_counts[0]
    if (first, 1) in per_step:
        print(f"speed-up incremental vs naive (batch 1, per sample, {first} thread(s)): "
              f"{naive / per_step[first, 1]:.0f}x  (target >= 50x for the default config)")
    print(f"real-time factor (seconds of compute per 1 s of {config.sample_rate} Hz audio; < 1 is faster than "
          f"real time):")
    for (threads, batch), seconds in per_step.items():
        rtf = seconds * config.sample_rate
        where = f"threads {threads}" if threads is not None else str(device)
        print(f"  {where:>10s}  batch {batch:3d}: {rtf:7.2f} s per batch  = {rtf / batch:6.2f} s per clip")
    print(f"  naive batch 1: {naive * config.sample_rate:7.1f} s per clip")

    # What limits it: per-operation overhead, not arithmetic.
    if device.type == "cpu":
        torch.set_num_threads(first)
    with torch.inference_mode():
        n_ops = ops_per_step(model, 1, device)
        op_s = tiny_op_seconds(device)
    print(f"what limits the RTF ({'threads ' + str(first) if first is not None else device}):")
    print(f"  one step dispatches {n_ops} torch operations; a tiny operation costs {op_s * 1e6:.1f} us here, "
          f"so overhead alone predicts {n_ops * op_s * 1e3:.3f} ms/step")
    for (threads, batch), seconds in per_step.items():
        if threads != first:
            continue
        flops = step_flops(config, batch)
        print(f"  batch {batch:3d}: measured {seconds * 1e3:.3f} ms/step, {flops / 1e6:.2f} MFLOP/step -> "
              f"{flops / seconds / 1e9:.2f} GFLOP/s achieved")
    print("  => the step is a chain of ~%d small dependent operations: per-op dispatch/launch cost, not FLOPs, "
          "sets the RTF, which is why a batch of clips costs little more than one clip and why extra threads "
          "do not help. Faster needs fewer operations (fused/compiled step kernels, as in nv-wavenet), "
          "not more arithmetic throughput." % n_ops)


if __name__ == "__main__":
    main()
