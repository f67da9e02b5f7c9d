"""RUN/report.html: report.md rendered as one HTML page where every linked .wav gets a player.

markdown-it-py (CommonMark + tables) renders the markdown; the page's images, audio and
sub-reports' figures are the run's own files, referenced relative to RUN, so the page works
wherever the run folder is copied whole.
"""

from __future__ import annotations

import html
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 0; }
.table-scroll { overflow-x: auto; max-width: 100%; margin: 1em 0; }  /* a wide table scrolls in its own box */
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; vertical-align: top; white-space: nowrap; }  /* "62.5% [57.1, 67.9]" on one line */
td:has(img) { white-space: normal; }  /* a player + spectrogram cell wraps its caption instead */
td img { max-width: 22em; }
img { max-width: 100%; }
audio { display: block; width: 22em; margin: 0.2em 0; }
blockquote { border-left: 4px solid #e0a000; margin-left: 0; padding-left: 1em; background: #fff8e0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def markdown_to_html(text: str, title: str) -> str:
    """A whole HTML page of the markdown ``text``; a link to a .wav becomes a player above the link."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    default_link = md.renderer.rules.get("link_open")

    def link_open(renderer, tokens, idx, options, env):
        href = tokens[idx].attrGet("href") or ""
        player = (f'<audio controls preload="none" src="{html.escape(href)}"></audio>'
                  if href.lower().endswith(".wav") else "")
        rendered = (default_link(tokens, idx, options, env) if default_link
                    else renderer.renderToken(tokens, idx, options, env))
        return player + rendered

    md.add_render_rule("link_open", link_open)
    body = md.render(text).replace("<table>", '<div class="table-scroll"><table>').replace("</table>", "</table></div>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"{body}</body>\n</html>\n")


def write_html(markdown_path: Path, title: str, legacy=None) -> Path:
    """report.html beside ``markdown_path`` (same folder, so every relative link still holds),
    published by tokenlm.core.outputs' rule (atomic, never over a file tokenlm did not write)."""
    from tokenlm.core.outputs import publish_text

    out = markdown_path.with_suffix(".html")
    publish_text(out, markdown_to_html(markdown_path.read_text(), title), legacy)
    return out
