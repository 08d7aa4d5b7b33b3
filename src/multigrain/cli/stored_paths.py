"""The image paths an index stores: absolute, so that it works from any folder.

`embed` records the paths as it was given them, often relative to the folder it ran in.
An index of relative paths only finds its images from that folder: a server started
elsewhere answered 410 for every thumbnail. `index build` and `index add` therefore store
each relative path made absolute against the current folder (not resolved: symbolic
links keep their names), and say so when those paths do not exist from here. `index
remove` accepts a path as the index stores it or relative to the current folder, so
indexes built before (with relative paths) keep working unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import typer


def absolute_paths(paths: Sequence[str], source: Path) -> list[str]:
    """`paths` of the embed output `source`, each relative one made absolute against the
    current folder; warns (stderr) when some of those do not exist from here."""
    from multigrain.data.listing import missing_relative_paths

    missing = missing_relative_paths(paths)
    if missing:
        typer.echo(
            f"warning: {source} holds relative paths that do not exist from {Path.cwd()} "
            f"(e.g. {missing[0]}): the index records them against this folder; run `index` "
            "in the folder where `embed` ran if they are relative to it",
            err=True,
        )
    return [os.path.abspath(p) for p in paths]


def indexed_forms(paths: Sequence[str], indexed: Sequence[str]) -> list[str]:
    """Each path as the index stores it: as given if stored so, else made absolute."""
    from multigrain.search.path_table import PathTable

    stored = indexed if isinstance(indexed, PathTable) else set(indexed)  # hashed either way
    return [p if p in stored else os.path.abspath(p) for p in paths]
