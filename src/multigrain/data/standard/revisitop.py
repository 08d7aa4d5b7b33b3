"""Revisited Oxford 5k / Paris 6k (Radenović et al., 2018) with the Easy/Medium/Hard protocols.

Expected layout, as the revisitop download script leaves it::

    root/
      roxford5k/
        gnd_roxford5k.pkl
        jpg/
          all_souls_000000.jpg
          ...
      rparis6k/
        gnd_rparis6k.pkl
        jpg/
          paris_defense_000000.jpg
          ...

The pickle holds a dict with 'imlist' (database image names without extension), 'qimlist'
(query image names) and 'gnd' (one dict per query with 'bbx' = [x1, y1, x2, y2] and the
database index lists 'easy', 'hard', 'junk'). Per protocol:
easy: positives = easy, junk = junk + hard; medium: positives = easy + hard, junk = junk;
hard: positives = hard, junk = junk + easy. Queries are cropped to 'bbx'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from multigrain.data.standard._files import require_dir, require_file
from multigrain.data.standard.safe_pickle import load_safe_pickle
from multigrain.data.standard.types import Box, RetrievalBenchmark
from multigrain.runtime.errors import MultiGrainError

RevisitopName = Literal["roxford5k", "rparis6k"]
Difficulty = Literal["easy", "medium", "hard"]
NAMES: tuple[str, ...] = ("roxford5k", "rparis6k")
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")


def _layout(name: str) -> str:
    return f"root/{name}/gnd_{name}.pkl and root/{name}/jpg/<image name>.jpg"


def _indices(entry: dict[str, Any], key: str, where: str) -> np.ndarray:
    if key not in entry:
        raise MultiGrainError(f"{where} has no '{key}' list")
    return np.asarray(entry[key], dtype=np.int64).reshape(-1)


def split_by_difficulty(
    easy: np.ndarray, hard: np.ndarray, junk: np.ndarray, difficulty: str
) -> tuple[np.ndarray, np.ndarray]:
    """(positives, junk) for one query under the revisitop `difficulty` protocol."""
    if difficulty == "easy":
        return easy, np.concatenate([junk, hard])
    if difficulty == "medium":
        return np.concatenate([easy, hard]), junk
    if difficulty == "hard":
        return hard, np.concatenate([junk, easy])
    raise MultiGrainError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")


def read_revisitop(
    root: Path | str, name: RevisitopName, *, difficulty: Difficulty
) -> RetrievalBenchmark:
    """Read rOxford5k or rParis6k (layout in the module docstring).

    Returns protocol "revisitop-<difficulty>"; query_boxes are the 'bbx' crops.
    """
    if name not in NAMES:
        raise MultiGrainError(f"unknown revisitop dataset {name!r}; choose one of {NAMES}")
    if difficulty not in DIFFICULTIES:
        raise MultiGrainError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    layout = _layout(name)
    root = require_dir(Path(root), what=name, layout=layout)
    folder = require_dir(root / name, what=name, layout=layout)
    gnd_path = require_file(folder / f"gnd_{name}.pkl", what=f"{name} ground truth", layout=layout)
    images = require_dir(folder / "jpg", what=f"{name} images", layout=layout)

    data = load_safe_pickle(gnd_path)
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise MultiGrainError(f"{gnd_path} must hold a dict with 'imlist', 'qimlist' and 'gnd'")
    if len(data["gnd"]) != len(data["qimlist"]):
        raise MultiGrainError(
            f"{gnd_path}: {len(data['gnd'])} 'gnd' entries for {len(data['qimlist'])} queries"
        )
    database = [images / f"{im}.jpg" for im in data["imlist"]]
    queries = [images / f"{im}.jpg" for im in data["qimlist"]]
    missing = [p for p in database + queries if not p.is_file()]
    if missing:
        raise MultiGrainError(
            f"{name}: {len(missing)} images listed in {gnd_path.name} are missing, "
            f"e.g. {missing[0]}; expected {layout}"
        )

    boxes: list[Box | None] = []
    positives: list[np.ndarray] = []
    junk: list[np.ndarray] = []
    for q, entry in enumerate(data["gnd"]):
        where = f"{gnd_path} query {q}"
        if not isinstance(entry, dict):
            raise MultiGrainError(f"{where}: expected a dict with 'bbx', 'easy', 'hard', 'junk'")
        bbx = entry.get("bbx")
        if bbx is None:
            boxes.append(None)
        else:
            x1, y1, x2, y2 = (float(v) for v in np.asarray(bbx, dtype=np.float64).reshape(4))
            boxes.append((x1, y1, x2, y2))
        pos, jnk = split_by_difficulty(
            _indices(entry, "easy", where),
            _indices(entry, "hard", where),
            _indices(entry, "junk", where),
            difficulty,
        )
        out_of_range = np.concatenate([pos, jnk])
        if out_of_range.size and (out_of_range.min() < 0 or out_of_range.max() >= len(database)):
            raise MultiGrainError(f"{where}: index outside the {len(database)}-image database")
        positives.append(pos)
        junk.append(jnk)
    return RetrievalBenchmark(
        name=name,
        database=database,
        queries=queries,
        query_boxes=boxes,
        positives=positives,
        junk=junk,
        query_in_database=[None] * len(queries),
        rotations=None,
        protocol=f"revisitop-{difficulty}",
    )
