"""The package's shape: modules of one concept, short enough to read (issue 17).

The floors themselves (imports point down, no cycles, function-level imports included)
are checked by import-linter in `make lint` (pyproject.toml, [tool.importlinter]); this
file checks what import-linter cannot.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import multigrain

PACKAGE = Path(multigrain.__file__).parent
MAX_LINES = 300
REASON = "Over 300 lines because"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_floors() -> None:
    """No module sits flat beside the floors except the entry points."""
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "api.py"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_short_or_says_why(path: Path) -> None:
    lines = path.read_text().splitlines()
    if len(lines) <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    head = "\n".join(docstring.splitlines()[:6])
    assert REASON in head, (
        f"{path.relative_to(PACKAGE)} has {len(lines)} lines: split it by concept, or say "
        f"'{REASON} ...' in the first lines of its docstring"
    )


def test_size_check_can_fail(tmp_path: Path) -> None:
    """The check above reads a docstring reason, not just any comment."""
    long_module = tmp_path / "long.py"
    long_module.write_text('"""A module."""\n# Over 300 lines because\n' + "x = 1\n" * 400)
    docstring = ast.get_docstring(ast.parse(long_module.read_text())) or ""
    assert REASON not in docstring
