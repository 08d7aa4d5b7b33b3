"""Evaluation reports people look at: markdown + JSON + an HTML page with a query grid and a plot.

The HTML page is self-contained (thumbnails and the plot are embedded as data URIs), so the
report folder can be moved or attached and still opens in any browser, offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from multigrain.data.images import ImageDecodeError, thumbnail_data_uri
from multigrain.metrics.copy_families import ALL, BreakdownRow
from multigrain.runtime.atomic import atomic_write_bytes, atomic_write_text


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


def plot_breakdown(rows: Sequence[BreakdownRow], path: Path, *, metric: str = "map") -> Path:
    """Grouped bars: `metric` per transform family (all strengths), one bar per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r.strength == ALL and r.family != ALL]
    families = list(dict.fromkeys(r.family for r in chosen))
    methods = list(dict.fromkeys(r.method for r in chosen))
    value = {(r.method, r.family): getattr(r, metric) for r in chosen}
    figure = Figure(figsize=(max(6.0, 0.9 * len(families) + 4), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    for offset, method in enumerate(methods):
        xs = [i + offset * width for i in range(len(families))]
        axes.bar(xs, [value.get((method, f), 0.0) for f in families], width, label=method)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families, rotation=30)
    axes.set_ylabel(metric)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes.set_title(f"copy detection: {metric} per transform family")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")  # keep the legend
    return atomic_write_bytes(path, buffer.getvalue())


def markdown_to_html(text: str) -> str:
    """Our reports' markdown (headings, pipe tables, bullets, paragraphs, `code`) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # the page's title is h1
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):  # skip the |---| rule
                    rows.append(cells)
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in rows[1:]
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and lines[i].strip()[0] not in "#|-":
                paragraph.append(lines[i].strip())
                i += 1
            if not paragraph:  # a lone "-" line that is not a bullet
                paragraph, i = [line], i + 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then `code` and **bold**."""
    parts = html.escape(text).split("`")
    for k in range(1, len(parts), 2):
        parts[k] = f"<code>{parts[k]}</code>"
    joined = "".join(parts)
    bold = joined.split("**")
    for k in range(1, len(bold), 2):
        bold[k] = f"<b>{bold[k]}</b>"
    return "".join(bold)


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
