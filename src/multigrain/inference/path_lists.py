"""Lists of file names on disk that any name survives: one JSON value a line.

`embed` writes the paths of its rows (``paths.jsonl``: one JSON string a line) and its
unreadable images (``failures-r*.jsonl``: one ``{"path": ..., "reason": ...}`` object a
line) this way. A file name may hold a line break, a tab or quotes, which a file of one
plain name a line cannot hold: a line break made ``paths.txt`` longer than
``descriptors.npy``, and a tab split a ``failures-r*.tsv`` record, so that ``--resume``
retried the image and appended its failure again on every run. JSON writes such characters
as escapes (``\\n``, ``\\t``) and gives the exact name back; names stay readable UTF-8 text.

The plain lists of earlier versions (``paths.txt``, ``failures-r*.tsv``) are still read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from multigrain.runtime.errors import MultiGrainError

PATHS_FILE = "paths.jsonl"
LEGACY_PATHS_FILE = "paths.txt"  # written before paths.jsonl: one name a line
FAILURES_PATTERNS = ("failures-r*.jsonl", "failures-r*.tsv")  # current, then legacy


def failures_name(rank: int) -> str:
    """The failure list that rank `rank` of an `embed` job appends to."""
    return f"failures-r{rank:03d}.jsonl"


def json_line(value: object) -> str:
    """`value` as one line of JSON and a newline: UTF-8 text where the value is, ``\\u``
    escapes where it is not (a name holding undecodable bytes, as surrogates)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value)
    return text + "\n"


def paths_text(paths: Iterable[str]) -> str:
    """The content of a ``paths.jsonl``: one JSON string a line."""
    return "".join(json_line(path) for path in paths)


def failure_line(path: str, reason: str) -> str:
    """One record of a ``failures-r*.jsonl``."""
    return json_line({"path": path, "reason": reason})


def read_paths(file: Path) -> list[str]:
    """The names of a ``paths.jsonl``, or of a legacy ``paths.txt`` (one name a line).

    Raises:
        MultiGrainError: a line of a ``paths.jsonl`` is not a JSON string.
    """
    lines = _lines(file)
    if file.name == LEGACY_PATHS_FILE:
        return lines
    paths = []
    for number, line in enumerate(lines, 1):
        try:
            path = json.loads(line)
        except json.JSONDecodeError:
            path = None
        if not isinstance(path, str):
            raise MultiGrainError(
                f"{file}, line {number}, is not a file name (a JSON string): the output is "
                "damaged; rerun `multigrain embed --resume` with the same inputs to rewrite it"
            )
        paths.append(path)
    return paths


def read_failures(output_dir: Path) -> dict[str, str]:
    """path -> reason, over every rank's failure list, current (JSON lines) and legacy (TSV)."""
    failures: dict[str, str] = {}
    for pattern in reversed(FAILURES_PATTERNS):  # the current lists have the last word
        for file in sorted(output_dir.glob(pattern)):
            failures.update(_read_failure_file(file))
    return failures


def open_failure_list(file: Path) -> TextIO:
    """`file` opened to append failure records, a last record cut short by a crash dropped
    first (its image is tried again), so that every record stays on a line of its own."""
    if file.is_file():
        content = file.read_bytes()
        if content and not content.endswith(b"\n"):
            with open(file, "r+b") as handle:
                handle.truncate(content.rfind(b"\n") + 1)
    return open(file, "a", encoding="utf-8")  # noqa: SIM115  # the caller closes it


def _lines(file: Path) -> list[str]:
    """The lines of `file`, split at "\\n" alone: ``str.splitlines`` would also split at
    U+2028 and other separators JSON leaves as they are, and text mode would turn a "\\r"
    of a name in a legacy list into a line break."""
    lines = file.read_bytes().decode("utf-8").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _read_failure_file(file: Path) -> dict[str, str]:
    lines = _lines(file)
    if file.suffix == ".tsv":  # legacy: path <TAB> reason; a name holding a tab is split
        pairs = [line.partition("\t") for line in lines]
        return {path: reason for path, _, reason in pairs if path}
    failures: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not file.read_bytes().endswith(b"\n"):
                break  # cut short by a crash: that image is tried again
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise MultiGrainError(
                f"{file}, line {number}, is not a failure record: delete that line (its image "
                "is then tried again by `multigrain embed --resume`)"
            )
        failures[record["path"]] = str(record.get("reason", ""))
    return failures
