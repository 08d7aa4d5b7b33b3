"""The report page renders our markdown: tables as tables, text escaped."""

from __future__ import annotations

from pathlib import Path

from multigrain.evaluation.report import markdown_to_html, write_html


def test_markdown_tables_headings_and_bullets_become_html() -> None:
    text = (
        "## Copy <detection>\n\n"
        "400 steps; `p*` = 3 and **whitening**\n\n"
        "| method | mAP |\n|---|---|\n| phash | 0.600 |\n| trained & whitened | 0.745 |\n\n"
        "- one\n- two\n"
    )
    page = markdown_to_html(text)
    assert "<h3>Copy &lt;detection&gt;</h3>" in page
    assert "<p>400 steps; <code>p*</code> = 3 and <b>whitening</b></p>" in page
    assert "<thead><tr><th>method</th><th>mAP</th></tr></thead>" in page
    assert "<tr><td>trained &amp; whitened</td><td>0.745</td></tr>" in page
    assert "---" not in page and page.count("<tr>") == 3
    assert "<ul><li>one</li><li>two</li></ul>" in page


def test_report_page_puts_the_plots_after_the_summary(tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG fake")
    page_path = write_html(
        tmp_path / "report.html", title="t", markdown_tables=["summary", "| a |\n|---|\n| 1 |"],
        plots=[plot], grid=[],
    )  # fmt: skip
    page = page_path.read_text()
    assert page.index("<p>summary</p>") < page.index("data:image/png") < page.index("<table>")
