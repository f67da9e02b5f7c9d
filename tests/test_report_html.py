"""RUN/report.html: every sample has a player and a spectrogram, bad outputs are flagged, and
the plots carry their reference lines."""

import json
import math
import shutil

import numpy as np
import pytest

from tests.conftest import tone
from tokenlm.pipeline.report import loss_references, write_report
from tokenlm.pipeline.sweep import reference_curves, reference_lines
from tokenlm.reporting.listening import audio_flags
from tokenlm.vocoder.vocoder import write_wav

SR = 16000
NOTE = "on CPU a pipeline check, not a vocoder"


@pytest.fixture
def heard_run(tiny_run, tmp_path):
    """tiny_run with planted vocoder outputs: a good pair, a silent and a clipped resynthesis,
    and a continuation whose prompt is the first second."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    samples = run / "vocoder" / "samples"
    good = tone(440, 2.0, SR, amplitude=0.3)
    for name, audio in {"00_a_original.wav": good, "00_a_resynth.wav": np.zeros(2 * SR, np.float32),
                        "01_b_original.wav": good, "01_b_resynth.wav": np.clip(4 * good, -1, 1)}.items():
        write_wav(samples / name, audio, SR)
    (run / "vocoder" / "metrics.json").write_text(json.dumps({
        "parameters": 1000, "receptive_field": 31, "steps": 2, "note": NOTE, "vocoder_logmel_db": 9.0,
        "resynthesis": {"clips": 2, "seconds_per_clip": 2.0, "generation_seconds": 1.8, "batch_size": 2,
                        "timed_after_warmup": True, "device": "cpu"}}))
    write_wav(samples / "griffinlim" / "00_a_griffinlim.wav", good, SR)
    write_wav(samples / "griffinlim" / "01_b_griffinlim.wav", good, SR)
    write_wav(run / "rawlm" / "samples" / "prompt.wav", good, SR)
    write_wav(run / "sweep_k" / "k4" / "vocoder" / "samples" / "00_a_resynth.wav", good, SR)
    write_wav(run / "generated" / "p_continued.wav", tone(330, 3.0, SR, amplitude=0.3), SR)
    (run / "generated" / "p_continued.json").write_text(json.dumps({
        "prompt": "p.wav", "prompt_seconds": 1.0, "generated_codes": 40, "code_rate": 20.0, "primed": True}))
    write_report(run)
    return run


def test_html_plays_and_draws_every_sample(heard_run):
    page = (heard_run / "report.html").read_text()
    wavs = (sorted(heard_run.glob("vocoder/samples/*.wav")) + sorted(heard_run.glob("vocoder/samples/griffinlim/*.wav"))
            + sorted(heard_run.glob("generated/*.wav")))
    assert len(wavs) == 7
    for wav in wavs:
        assert f'<audio controls preload="none" src="{wav.relative_to(heard_run)}">' in page
        assert (heard_run / "report_files" / f"mel_{wav.stem}.png").is_file()
    assert NOTE in page and "left of the dashed line" in page


def test_every_audio_file_of_the_run_has_a_player(heard_run):
    page = (heard_run / "report.html").read_text()
    every = sorted(heard_run.rglob("*.wav"))
    assert len(every) == 9
    for wav in every:
        assert page.count(f'<audio controls preload="none" src="{wav.relative_to(heard_run)}">') == 1, wav


def test_generation_speed_says_batch_and_warm_up(heard_run):
    text = (heard_run / "report.md").read_text()
    # 1.8 s of wall time for 2 clips x 2.0 s of audio: 0.45 s per second of audio made
    assert ("generation ran at 0.45 s per second of audio made (2 clips generated together in batches of 2 on "
            "cpu, 1.8 s in all, after a warm-up call (excluded") in text


def test_wide_tables_scroll_in_their_own_box():
    from tokenlm.reporting.html import markdown_to_html

    wide = "| " + " | ".join(f"column {i}" for i in range(14)) + " |\n|" + "---|" * 14 + "\n| " + " | ".join(
        "1" for _ in range(14)) + " |\n"
    page = markdown_to_html(wide, "t")
    assert '<div class="table-scroll"><table>' in page and "</table></div>" in page
    assert ".table-scroll { overflow-x: auto" in page


def test_multi_panel_figures_are_a_grid_that_fits_1280_px(tmp_path):
    from PIL import Image

    from tokenlm.pipeline.sweep import draw_figures

    rows = [{"k": k, **{f"probe_lm_accuracy_t{i}": 0.1 * i + k / 1000 for i in range(3)},
             **{f"probe_bag_accuracy_t{i}": 0.2 for i in range(3)}} for k in (16, 64, 256)]
    assert "probe" in draw_figures(rows, tmp_path, prefix="sweep_")
    width, height = Image.open(tmp_path / "sweep_probe.png").size
    assert width <= 1280 and height > 340  # six panels: 3 a row, 2 rows (was one 2520 x 340 strip)


def test_silent_and_clipped_resyntheses_are_flagged(heard_run):
    for text in ((heard_run / "report.md").read_text(), (heard_run / "report.html").read_text()):
        flagged = text.split("Flagged:")[1].split("\n")[0]
        assert "00_a_resynth.wav" in flagged and "silent" in flagged
        assert "01_b_resynth.wav" in flagged and "clipped" in flagged
        assert "original.wav" not in flagged and "continued" not in flagged


def test_audio_flags():
    sound = tone(440, 1.0, SR, amplitude=0.5)
    assert audio_flags(sound) == []
    assert audio_flags(sound / np.abs(sound).max()) == []  # normalised: one peak at full scale is fine
    assert [f.split()[0] for f in audio_flags(np.zeros(SR))] == ["silent"]
    assert [f.split()[0] for f in audio_flags(1e-4 * sound)] == ["silent"]
    assert [f.split()[0] for f in audio_flags(np.clip(4 * sound, -1, 1))] == ["clipped"]


def test_lm_loss_plot_marks_the_kept_step_and_references():
    lines = loss_references({"best_step": 120, "unigram_ppl": 50.0, "bigram_ppl": 20.0}, codebook_size=256)
    assert lines["kept_step"] == 120
    assert lines["horizontal"] == pytest.approx({"chance (uniform over K)": math.log(256),
                                                 "unigram": math.log(50.0), "bigram": math.log(20.0)})


def test_sweep_probe_plots_draw_chance_and_floor():
    rows = [{"k": 4, "probe_lm_accuracy_keys": 0.5, "probe_chance_keys": 0.25, "probe_floor_keys": 0.4}]
    assert [line[:2] for line in reference_lines(rows, "probe_lm_accuracy_keys")] == [
        (0.25, "chance"), (0.4, "log-mel floor")]
    assert reference_lines(rows, "perplexity") == []


def test_sweep_lm_plot_draws_chance_and_count_models():
    rows = [{"k": k, "lm_val_perplexity": k / 2, "lm_unigram_perplexity": k * 0.9, "lm_bigram_perplexity": k * 0.7}
            for k in (4, 8)]
    curves = {name: values for values, name, _, _ in reference_curves(rows, "lm_val_perplexity")}
    assert curves == {"chance (uniform over K)": [4, 8], "unigram": [3.6, 7.2], "bigram": [2.8, 5.6]}
    for row in rows:  # 20 codes per second
        row.update(entropy_bits=1.5, bits_per_second=30.0)
    curves = {name: values for values, name, _, _ in reference_curves(rows, "lm_bits_per_second")}
    assert curves["chance (uniform over K)"] == pytest.approx([40, 60])
    assert curves["bigram"] == pytest.approx([20 * math.log2(2.8), 20 * math.log2(5.6)])
