"""What a command writes: an output folder or an output file, checked before any work.

Option callbacks (`folder_option`, `file_option`) refuse a file where a folder is expected,
and a folder or a foreign suffix where a file is; `removed_on_failure` removes the output
folder a failed command created (`first_missing` + `remove_created`), unless it holds
work worth keeping. Light on imports: the option callbacks run while `multigrain` parses its
arguments.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer

PathText = TypeVar("PathText", Path, str, Path | None, str | None)

#: Names ending so are taken for files: `-o groups.json` where a folder is expected is a slip.
FILE_SUFFIXES = frozenset(
    ".txt .json .csv .tsv .html .md .npy .npz .pt .pth .onnx .png .jpg .jpeg .pdf".split()
)


def folder_option(what: str) -> Callable[[PathText], PathText]:
    """A Typer ``callback`` for an option naming a folder to write; `what` it is for.

    Refuses an existing file, or a name with a file suffix (`-o x.txt`).
    """

    def check(value: PathText) -> PathText:
        if value is None:
            return value
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise typer.BadParameter(
                f"{value} is a file, but a folder is expected {what}: name a new or existing folder"
            )
        if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
            raise typer.BadParameter(
                f"{value} looks like a file name, but a folder is expected {what}: name a "
                f"folder, e.g. {path.with_suffix('')}"
            )
        return value

    return check


def file_option(*suffixes: str) -> Callable[[Path | None], Path | None]:
    """A Typer ``callback`` for an option naming a file to write, ending in one of `suffixes`.

    Refuses an existing folder, and (when `suffixes` are given) a name ending otherwise.
    """

    def check(value: Path | None) -> Path | None:
        if value is None:
            return value
        if value.is_dir():
            raise typer.BadParameter(f"{value} is a folder, but a file is expected: name a file")
        if suffixes and value.suffix.lower() not in suffixes:
            wanted = " or ".join(suffixes)
            raise typer.BadParameter(
                f"{value} does not end in {wanted}: name a {wanted} file, e.g. "
                f"{value.with_suffix(suffixes[0])}"
            )
        return value

    return check


@contextmanager
def removed_on_failure(folder: Path, *, keep: str = "*") -> Iterator[None]:
    """Remove the folder (and parents) that the enclosed work created, if it fails.

    The same as `first_missing` before the work and `remove_created` on an exception.
    """
    created = first_missing(folder)
    try:
        yield
    except BaseException:
        remove_created(created, keep=keep)
        raise


def first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet; None if it does.

    What a command writing to `folder` will create: call it before any work, and give it
    to `remove_created` when the work fails.
    """
    if folder.exists():
        return None
    missing = folder.absolute()
    while not missing.parent.exists():
        missing = missing.parent
    return missing


def remove_created(created: Path | None, *, keep: str = "*") -> None:
    """Remove `created` (from `first_missing`) unless it holds a non-empty file named `keep`.

    `keep` is a glob of the files worth keeping from a failed run, e.g. "*.npz" for the
    shards that `embed --resume` continues from (a failure list alone is not worth it).
    A folder that existed before the command (`first_missing` gave None) is never touched.
    """
    if created is None or not created.is_dir():
        return
    if not any(
        path.is_symlink() or (path.is_file() and path.stat().st_size > 0)
        for path in created.rglob(keep)
    ):
        shutil.rmtree(created, ignore_errors=True)
