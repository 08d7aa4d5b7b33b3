"""Evaluation reports people look at: markdown + JSON + an HTML page with a query grid and plots.

The HTML page is self-contained (thumbnails and the plots, drawn by plots.py, are embedded
as data URIs), so the report folder can be moved or attached and still opens in any
browser, offline. Markdown is rendered by markdown-it-py (CommonMark and pipe tables).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from PIL import Image

from multigrain.data.images import ImageDecodeError
from multigrain.data.thumbnails import thumbnail_data_uri
from multigrain.runtime.atomic import atomic_write_text


@dataclass(frozen=True)
class GridRow:
    """One query and its best results; `correct[i]` marks a true match."""

    query: Path
    caption: str
    results: list[Path]
    scores: list[float]
    correct: list[bool]


def thumbnail_uri(path: Path, size: int = 128) -> str:
    """A JPEG thumbnail of `path` as a data URI (a grey square when it cannot be read)."""
    try:
        return thumbnail_data_uri(path, size)
    except ImageDecodeError:  # a report must not fail on one picture
        image = Image.new("RGB", (size, size), (128, 128, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class _CompactRenderer(RendererHTML):
    """markdown-it's HTML renderer without the line breaks between block tags."""

    def renderToken(  # noqa: N802 -- markdown-it's name
        self, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
    ) -> str:
        return super().renderToken(tokens, idx, options, env).strip("\n")


#: CommonMark with pipe tables; raw HTML in the text is escaped, never passed through.
_MARKDOWN = MarkdownIt("commonmark", {"html": False}, renderer_cls=_CompactRenderer).enable("table")
#: Tags renamed in our pages: the page's title is the only h1, so headings move one level
#: down (at most h4); strong text is plain bold.
_RENAMED = {"h1": "h2", "h2": "h3", "h3": "h4", "h5": "h4", "h6": "h4", "strong": "b"}


def markdown_to_html(text: str) -> str:
    """Our reports' markdown (headings, pipe tables, bullets, paragraphs, `code`) as HTML."""
    tokens = _MARKDOWN.parse(text)
    for token in tokens:
        for child in [token, *(token.children or [])]:
            child.tag = _RENAMED.get(child.tag, child.tag)
    return _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})


def write_html(
    path: Path, *, title: str, markdown_tables: Sequence[str], plots: Sequence[Path],
    grid: Sequence[GridRow], notes: Sequence[str] = (),
) -> Path:  # fmt: skip
    """The report page: notes, the first markdown block, the plots, the other blocks, the grid.

    Markdown blocks are rendered as HTML (tables as tables). Everything is inlined (images
    as data URIs), so the page opens from anywhere.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:80em}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}",
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:right;font-size:13px}",
        "th:first-child,td:first-child{text-align:left}th{background:#eee}",
        "tbody tr:nth-child(even){background:#f8f8f8}code{background:#f4f4f4}",
        ".row{display:flex;gap:8px;margin:8px 0;align-items:flex-start}",
        ".cell{text-align:center;font-size:12px}.cell img{display:block;border:4px solid #ccc}",
        ".ok img{border-color:#2a2}.bad img{border-color:#d33}.query img{border-color:#36c}",
        "img.plot{max-width:100%;height:auto;display:block}",  # wide plots fit the page
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for note in notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    blocks = [markdown_to_html(table) for table in markdown_tables]
    parts += blocks[:1]
    for plot in plots:
        encoded = base64.b64encode(plot.read_bytes()).decode()
        parts.append(
            f"<img class='plot' alt='{html.escape(plot.stem)}' "
            f"src='data:image/png;base64,{encoded}'>"
        )
    parts += blocks[1:]
    if grid:
        parts.append("<h2>Queries and their best results (green: correct)</h2>")
    for row in grid:
        cells = [
            f"<div class='cell query'><img src='{thumbnail_uri(row.query)}'>"
            f"{html.escape(row.caption)}</div>"
        ]
        for result, score, correct in zip(row.results, row.scores, row.correct, strict=True):
            css = "ok" if correct else "bad"
            cells.append(
                f"<div class='cell {css}'><img src='{thumbnail_uri(result)}'>{score:.3f}</div>"
            )
        parts.append("<div class='row'>" + "".join(cells) + "</div>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
