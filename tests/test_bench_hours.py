"""scripts/bench_hours.py --smoke: every stage runs in its own process at two tiny sizes and
reports its wall time, CPU time, peak RSS and the disk its run holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_hours_smoke_measures_every_stage(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_hours.py"), "--smoke", "--out", out,
                           "--corpus", tmp_path / "corpus", "--task", tmp_path / "task"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    stages = [r for r in results if r["stage"] != "disk"]
    assert [r["stage"] for r in stages] == 2 * ["prepare", "autoencoder", "codebook", "encode_run", "lm_open",
                                                "pretrain", "encode_new", "vocoder", "probe"]
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_rss_mb"] > 50 for r in stages)
    assert all(r["lm_open_s"] > 0 for r in stages if r["stage"] == "lm_open")
    # 6 clips of 4 s at 16 kHz: 1 + 64000 / 160 = 401 frames of 64 float16 each, once then twice over
    disk = [r for r in results if r["stage"] == "disk"]
    assert [d["features_bin_bytes"] for d in disk] == [6 * 401 * 64 * 2, 2 * 6 * 401 * 64 * 2]
    assert all(d["tokens_bytes"] > 0 and d["run_bytes"] > d["features_bytes"] for d in disk)
    assert not (out / "h0.00666667").exists()  # each size's run removed once measured
