"""Screenshots of a run's report.html as a reader sees it at 1280 px, in headless Chromium.

    python scripts/screenshot_report.py runs/demo/report.html --out screens/after [--height 12000]

Renders the page in a 1280 px wide window of ``--height`` px (the page's length, or the top of
it), then cuts that into 1280 x 2000 tiles: OUT-00.png, OUT-01.png, ... (view them one by one;
a wide table that runs off the page or an unreadable figure shows in them as it would on a
screen). Needs Chromium (`apt-get install chromium`); nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH, TILE = 1280, 2000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no Chromium found: apt-get install -y chromium")


def screenshot(page: Path, out: Path, height: int) -> list[Path]:
    """Tiles of ``page`` rendered at WIDTH x ``height``; their paths."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.png"
        subprocess.run([chromium(), *FLAGS, f"--window-size={WIDTH},{height}", f"--screenshot={full}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=300)
        image = Image.open(full)
        tiles = []
        out.parent.mkdir(parents=True, exist_ok=True)
        for n, top in enumerate(range(0, _content_height(image), TILE)):
            tile = out.parent / f"{out.name}-{n:02d}.png"
            image.crop((0, top, WIDTH, min(top + TILE, image.height))).save(tile)
            tiles.append(tile)
        return tiles


def _content_height(image) -> int:
    """Where the page ends: the last row that is not plain white (the window is taller)."""
    gray = image.convert("L")
    width, height = gray.size
    pixels = gray.load()
    for y in range(height - 24, -1, -8):  # above the window's own horizontal scrollbar
        if any(pixels[x, y] < 250 for x in range(0, width, 4)):
            return min(height, y + 40)
    return min(height, TILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="report.html")
    parser.add_argument("--out", type=Path, required=True, help="tile prefix: OUT-00.png, OUT-01.png, ...")
    parser.add_argument("--height", type=int, default=16000, help="window height in px (at most 16384) [16000]")
    args = parser.parse_args()
    for tile in screenshot(args.page, args.out, min(args.height, 16384)):
        print(tile)


if __name__ == "__main__":
    main()
