"""The output folder of a training run: refusing to start over another run, and the log of a
resumed run.

A run writes ``checkpoint.pt``, ``log.jsonl`` and ``snapshots/`` into its folder. A new run
(not ``--resume``) into a folder holding any of them would replace the checkpoint and append
to the log of another run, so it is refused unless asked to ``overwrite`` (then they are
removed once the new run is set up, just before it writes). A resumed run continues from its
checkpoint's step; the log lines of later steps (written before a kill) are dropped, so that
the log reads as the uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
SNAPSHOTS_NAME = "snapshots"
RUN_ENTRIES = (CHECKPOINT_NAME, LOG_NAME, SNAPSHOTS_NAME)


def run_entries(output_dir: Path) -> list[str]:
    """The names of :data:`RUN_ENTRIES` present in `output_dir` (empty: no run there)."""
    return [name for name in RUN_ENTRIES if (output_dir / name).exists()]


def check_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that a run may write into `output_dir` (changes nothing).

    Raises:
        MultiGrainError: `output_dir` holds a run and neither `resume` nor `overwrite` is
            set, or both are set.
    """
    if resume and overwrite:
        raise MultiGrainError(
            "--resume continues the run in the output folder and --overwrite replaces it: "
            "give one of them"
        )
    found = run_entries(output_dir)
    if found and not (resume or overwrite):
        raise MultiGrainError(
            f"{output_dir} already holds a training run ({', '.join(found)}): continue it with "
            "--resume, write the new run to another --output-dir, or replace it with --overwrite"
        )


def remove_run(output_dir: Path) -> None:
    """Delete the run in `output_dir` (its :data:`RUN_ENTRIES`), for a run replacing it."""
    found = run_entries(output_dir)
    for name in found:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found:
        logger.info("removed the previous run in %s (%s)", output_dir, ", ".join(found))


def trim_log(path: Path, step: int) -> int:
    """Drop the lines of the JSON-lines log at `path` after `step` (atomically); returns how
    many were dropped. Lines that do not parse (a write cut short by a kill) go too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
        logger.info("%s: dropped %d line(s) after step %d, the checkpoint's", path, dropped, step)
    return dropped
