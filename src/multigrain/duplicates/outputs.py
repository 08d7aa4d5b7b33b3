"""What ``find-duplicates`` writes: groups.json, groups.csv and a contact sheet (HTML).

Every file is written atomically. The JSON holds everything (threshold and how it was
chosen, the calibration's measured precision and recall, every pair's score, the file to
keep); the CSV has one row per file; the page shows each group's thumbnails with their
scores and marks the suggested keeper, and opens offline (thumbnails are embedded).
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

from multigrain.data.images import ImageDecodeError
from multigrain.data.thumbnails import thumbnail_data_uri
from multigrain.duplicates.folder import DuplicateReport
from multigrain.duplicates.groups import DuplicateGroup
from multigrain.runtime.atomic import atomic_write_text

THUMBNAIL_SIDE = 180


def default_output(folder: str | Path) -> Path:
    """Where results go unless told: ``FOLDER-duplicates`` beside the folder."""
    source = Path(folder).resolve()
    return source.with_name(source.name + "-duplicates")


def report_dict(report: DuplicateReport) -> dict[str, object]:
    """The report as JSON-ready values (enums as their names)."""
    return {
        "folder": report.folder,
        "num_images": report.num_images,
        "num_groups": len(report.groups),
        "num_duplicates": report.num_duplicates,
        "threshold": report.threshold,
        "threshold_source": report.threshold_source,
        "score": report.score_kind.value,
        "calibration": asdict(report.calibration) if report.calibration else None,
        "min_inliers": report.min_inliers,
        "verification": asdict(report.verification) if report.verification else None,
        "model": {
            "identity": report.model,
            "resolution": report.resolution,
            "exponent": report.exponent,
            "whitened": report.whitened,
        },
        "groups": [
            {
                "kind": group.kind.value,
                "keep": group.keep,
                "members": [asdict(member) for member in group.members],
                "pairs": [asdict(pair) for pair in group.pairs],
            }
            for group in report.groups
        ],
        "unreadable": [asdict(failure) for failure in report.failures],
    }


def write_outputs(report: DuplicateReport, folder: Path) -> dict[str, Path]:
    """groups.json, groups.csv and contact-sheet.html under `folder` -> their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "json": atomic_write_text(
            folder / "groups.json", json.dumps(report_dict(report), indent=1)
        ),
        "csv": atomic_write_text(folder / "groups.csv", _csv(report)),
        "html": atomic_write_text(folder / "contact-sheet.html", _page(report)),
    }
    return written


def _csv(report: DuplicateReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "kind", "path", "keep", "width", "height", "bytes", "best_score"])
    for number, group in enumerate(report.groups):
        for member in group.members:
            best = max(
                (p.score for p in group.pairs if member.path in (p.a, p.b)), default=float("nan")
            )
            writer.writerow([
                number, group.kind.value, member.path, member.path == group.keep,
                member.width, member.height, member.num_bytes, f"{best:.4f}",
            ])  # fmt: skip
    return buffer.getvalue()


def _thumbnail(path: str) -> str:
    try:
        uri = thumbnail_data_uri(path, THUMBNAIL_SIDE)
    except ImageDecodeError:
        return "<em>unreadable</em>"
    return f"<img src='{uri}' alt=''>"


def _group_html(number: int, group: DuplicateGroup) -> str:
    parts = [
        f"<section><h2>Group {number + 1}: {len(group.members)} files ({group.kind.value})</h2>"
    ]
    for member in group.members:
        keep = member.path == group.keep
        badge = "<b class='keep'>keep</b> " if keep else ""
        parts.append(
            f"<figure class='{'keep' if keep else 'copy'}'>{_thumbnail(member.path)}"
            f"<figcaption>{badge}{html.escape(member.path)}<br>{member.width}×{member.height}, "
            f"{member.num_bytes / 1024:.0f} KiB</figcaption></figure>"
        )
    rows = "".join(
        f"<tr class='{'linked' if pair.linked else ''}'><td>{html.escape(Path(pair.a).name)}</td>"
        f"<td>{html.escape(Path(pair.b).name)}</td><td>{pair.score:.3f}</td>"
        f"<td>{pair.cosine:.3f}</td><td>{'' if pair.inliers is None else pair.inliers}</td></tr>"
        for pair in group.pairs
    )
    parts.append(
        "<table><tr><th>a</th><th>b</th><th>score</th><th>cosine</th><th>matching points</th>"
        f"</tr>{rows}</table></section>"
    )
    return "".join(parts)


def _verification_html(report: DuplicateReport) -> str:
    if report.min_inliers is None:
        return ""
    text = (
        "Each image was also matched point for point with its nearest images; a pair with at "
        f"least <b>{report.min_inliers}</b> matching points in the same arrangement (one "
        "shift, scale and rotation) is linked whatever its score: crops and copies with "
        "text or bars are found this way."
    )
    found = report.verification
    if found is not None:
        text += html.escape(
            f" On the synthetic copies, {found.recall:.0%} were verified with their original "
            f"(score or points: {found.combined_recall:.0%}); of {found.unrelated_pairs} "
            f"unrelated pairs matched, the highest count was {found.highest_unrelated}."
        )
    return f"<p>{text}</p>"


def summary_lines(report: DuplicateReport) -> list[str]:
    """What the command prints about how links were made (threshold, calibration,
    verification), one line each."""
    lines = []
    calibration = report.calibration
    if calibration is not None:
        lines.append(
            f"threshold {report.threshold:.3f} ({report.score_kind.value} score), calibrated on "
            f"{calibration.num_sources} of the images: links estimated "
            f"{calibration.estimated_precision:.0%} true ({calibration.expected_false_links:.1f} "
            f"unrelated pairs expected among {calibration.folder_links}); recall "
            f"{calibration.estimated_recall:.0%} on synthetic copies"
        )
        if not calibration.reached_target:
            lines.append(
                f"warning: the target precision {calibration.target_precision:g} was not "
                "reached (too many look-alikes for this model): the threshold is where the "
                "estimate is best; pass --threshold to choose another"
            )
    else:
        lines.append(f"threshold {report.threshold:.3f} ({report.score_kind.value} score, given)")
    found = report.verification
    if found is not None:
        lines.append(
            f"point matching: {found.folder_links} pairs verified with >= "
            f"{found.min_inliers} matching points (of {found.folder_pairs} matched; unrelated "
            f"pairs reached {found.highest_unrelated}); recall on synthetic copies "
            f"{found.combined_recall:.0%} with it"
        )
    elif report.min_inliers is not None:
        lines.append(f"point matching: pairs with >= {report.min_inliers} matching points linked")
    return lines


def _page(report: DuplicateReport) -> str:
    calibration = report.calibration
    how = (
        f"calibrated on this folder: its links are estimated "
        f"{calibration.estimated_precision:.0%} true ({calibration.expected_false_links:.1f} "
        f"unrelated pairs expected among {calibration.folder_links}; target "
        f"{calibration.target_precision:g}"
        f"{'' if calibration.reached_target else ', not reached'}), and "
        f"{calibration.estimated_recall:.0%} of "
        f"{calibration.num_sources * calibration.copies_per_source} synthetic copies of "
        f"{calibration.num_sources} of its images are found"
        if calibration is not None
        else report.threshold_source
    )
    meaning = (
        "their cosine similarity minus what each scores with its 10 nearest other images "
        "of the folder (so two look-alikes in a crowd of similar photos score low)"
        if report.score_kind.value == "neighbourhood"
        else "their cosine similarity"
    )
    head = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Duplicate groups</title>"
        "<style>body{font:13px sans-serif;margin:1.5em}figure{display:inline-block;"
        f"margin:4px;width:{THUMBNAIL_SIDE}px;vertical-align:top;word-break:break-all}}"
        "figure.keep img{outline:3px solid #2a7}b.keep{color:#2a7}table{font-size:12px;"
        "border-collapse:collapse}td,th{padding:1px 8px}tr.linked td{font-weight:bold}"
        "</style></head><body>"
    )
    summary = (
        f"<h1>{len(report.groups)} duplicate groups in {html.escape(report.folder)}</h1>"
        f"<p>{report.num_images} images; {report.num_duplicates} files could go. Two images "
        f"are linked when their score, {meaning}, is at least "
        f"<b>{report.threshold:.3f}</b>, {html.escape(how)}. Bold pairs are linked; the "
        "suggested file to keep (most pixels, then largest file) is outlined.</p>"
        f"{_verification_html(report)}"
    )
    groups = "".join(_group_html(number, group) for number, group in enumerate(report.groups))
    return head + summary + groups + "</body></html>"
