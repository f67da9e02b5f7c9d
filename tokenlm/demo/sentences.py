"""Corpus speech: random English sentences spoken by eSpeak NG voices, several per file.

The sentences come from a small grammar whose vocabulary leaves out the ten keywords of
the ``speech`` demo task (and every word that is spelled like one), so the pretraining
corpus never says a word that the keyword probe is tested on.
"""

from __future__ import annotations

import numpy as np

from tokenlm.demo.common import SAMPLE_RATE
from tokenlm.demo.speech import KEYWORDS, espeak_render

NAMES = ("Anna", "Peter", "Maria", "Thomas", "Lucy", "Daniel", "Sarah", "Robert", "Emma",
         "Oliver", "Grace", "Henry", "Clara", "Samuel", "Julia", "Victor")
NOUNS = ("table", "window", "garden", "river", "letter", "teacher", "doctor", "kitchen",
         "village", "mountain", "bottle", "candle", "market", "bridge", "basket", "camera",
         "engine", "forest", "island", "ladder", "mirror", "museum", "orange", "pencil",
         "rabbit", "station", "ticket", "tower", "violin", "wagon", "blanket", "castle",
         "dinner", "farmer", "jacket", "lemon", "meadow", "pocket", "sister", "student")
ADJECTIVES = ("small", "heavy", "quiet", "yellow", "ancient", "bright", "careful", "empty",
              "famous", "gentle", "hungry", "lonely", "narrow", "silver", "strange", "tired",
              "warm", "wooden", "curious", "distant", "golden", "purple", "simple", "sudden")
# (past, base) forms of transitive verbs
VERBS = (("carried", "carry"), ("painted", "paint"), ("found", "find"), ("opened", "open"),
         ("cleaned", "clean"), ("borrowed", "borrow"), ("visited", "visit"), ("watched", "watch"),
         ("repaired", "repair"), ("described", "describe"), ("noticed", "notice"),
         ("remembered", "remember"), ("sold", "sell"), ("bought", "buy"), ("moved", "move"),
         ("measured", "measure"), ("counted", "count"), ("followed", "follow"))
ADVERBS = ("slowly", "quickly", "quietly", "happily", "carefully", "again", "today",
           "yesterday", "together", "alone", "early", "later")
PREPOSITIONS = ("in", "near", "behind", "beside", "under", "across", "inside", "beyond",
                "along", "around", "through", "past")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve",
           "twenty", "forty", "a hundred")
TEMPLATES = (
    "The {adj} {noun} {verb} the {noun2} {adv}.",
    "{name} {verb} a {adj} {noun} {prep} the {noun2}.",
    "Did {name} {base} the {noun} {prep} the {adj} {noun2}?",
    "We will {base} the {noun} with {name} {adv}.",
    "I think the {noun} {prep} the {noun2} was {adj}.",
    "There were {number} {noun}s {prep} the {adj} {noun2}.",
    "{name} and {name2} {verb} {number} {adj} {noun}s.",
    "Why is the {noun} so {adj}?",
    "Please {base} the {adj} {noun} before dinner.",
    "After the storm, the {noun} looked {adj} and {adj2}.",
)
VOCABULARY = frozenset(
    word.lower()
    for group in (NAMES, NOUNS, ADJECTIVES, ADVERBS, PREPOSITIONS, NUMBERS)
    for entry in group
    for word in entry.split()
) | {w for pair in VERBS for w in pair} | frozenset(
    w.strip(".,?").lower() for t in TEMPLATES for w in t.split() if not w.strip(".,?").startswith("{")
)
assert not VOCABULARY & set(KEYWORDS), "corpus speech must not contain a demo keyword"

ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "klatt3", "klatt4", "croak", "whisper", "Alex", "Annie", "aunty", "boris",
            "david", "edward", "grandma", "grandpa", "linda", "max", "quincy", "steph")


def draw_sentence(rng: np.random.Generator) -> str:
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]

    def pick(words):
        return words[int(rng.integers(len(words)))]

    verb, base = pick(VERBS)
    return template.format(
        adj=pick(ADJECTIVES), adj2=pick(ADJECTIVES), noun=pick(NOUNS), noun2=pick(NOUNS),
        verb=verb, base=base, adv=pick(ADVERBS), prep=pick(PREPOSITIONS), name=pick(NAMES),
        name2=pick(NAMES), number=pick(NUMBERS),
    )


def _draw_speaker(rng: np.random.Generator) -> dict:
    return {
        "voice": f"{ACCENTS[int(rng.integers(len(ACCENTS)))]}+{VARIANTS[int(rng.integers(len(VARIANTS)))]}",
        "rate": int(rng.integers(110, 241)),  # words per minute
        "pitch": int(rng.integers(10, 91)),
        "range": int(rng.integers(10, 91)),
    }


def render_speech(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """``seconds`` of sentences by 1-3 speakers taking turns, with pauses between them."""
    n = int(round(seconds * SAMPLE_RATE))
    speakers = [_draw_speaker(rng) for _ in range(int(rng.integers(1, 4)))]
    out = np.zeros(n)
    pos = int(rng.uniform(0.0, 0.5) * SAMPLE_RATE)
    while pos < n:
        # One helper process per batch; a batch is sized to fill what is left, about.
        words_per_second = 2.5
        batch = []
        estimate = 0.0
        while estimate < (n - pos) / SAMPLE_RATE:
            speaker = speakers[int(rng.integers(len(speakers)))]
            text = draw_sentence(rng)
            batch.append({**speaker, "text": text, "seed": int(rng.integers(0, 2**31 - 1))})
            estimate += len(text.split()) / words_per_second * 150 / speaker["rate"] + 0.5
        pauses = rng.uniform(0.15, 0.9, size=len(batch))
        levels = 10 ** (rng.uniform(-4.0, 0.0, size=len(batch)) / 20)
        for (pcm, rate), pause, level in zip(espeak_render(batch), pauses, levels):
            audio = _trimmed(pcm, rate)
            if audio is None or pos >= n:
                continue
            piece = audio[: n - pos] * level
            out[pos: pos + len(piece)] = piece
            pos += len(piece) + int(pause * SAMPLE_RATE)
    return out


def _trimmed(pcm: np.ndarray, rate: int) -> np.ndarray | None:
    """The utterance without its leading and trailing silence, at 16 kHz, peak 1."""
    import soxr

    audio = pcm.astype(np.float64) / 32768.0
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak < 1e-3:
        return None
    loud = np.nonzero(np.abs(audio) > 0.01 * peak)[0]
    audio = audio[max(loud[0] - int(0.01 * rate), 0): loud[-1] + int(0.05 * rate)]
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return audio / max(float(np.abs(audio).max()), 1e-9)
