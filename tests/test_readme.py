"""The README's Python examples run as written, so they cannot rot (issue 15)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_pattern

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3
    assert any("find_duplicates" in block for block in BLOCKS)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name: a.jpg and b.jpg, and a photos/ folder holding them."""
    root = tmp_path_factory.mktemp("readme")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for name, label in (("a.jpg", 0), ("b.jpg", 1)):
        image = make_pattern(rng, label, 96)
        image.save(root / name, quality=95)
        image.save(root / "photos" / name, quality=95)
    image.resize((48, 48)).save(root / "photos" / "b-small.jpg", quality=95)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs(number: int, workspace: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[number]], cwd=workspace, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"README block {number}:\n{BLOCKS[number]}\n{result.stderr[-3000:]}"
    )
