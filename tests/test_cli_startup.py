"""The command line starts fast: help and version text load no torch, numpy, PIL or faiss.

Structural, not timed: which modules the process imported (``-X importtime`` lists every
one). benchmarks/cli_startup.py measures the seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import multigrain

#: What `multigrain --help`, `--version` and `multigrain COMMAND --help` must not import.
HEAVY = ("torch", "torchvision", "faiss", "numpy", "PIL", "fastapi", "matplotlib", "cv2")


def imported_modules(stderr: str) -> set[str]:
    """Every module named in the ``-X importtime`` report on `stderr`."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "multigrain", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["embed", "--help"]])
def test_text_only_commands_load_no_heavy_library(args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = imported_modules(result.stderr)
    assert "multigrain.cli.main" in modules  # the report is read as meant
    assert heavy(modules) == []


def test_version():
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"multigrain {multigrain.__version__}\n"


# Every command's --help in one process (the commands registered as `multigrain` does),
# then the heavy modules it holds; one subprocess, not one per command.
EVERY_HELP = """
import json, sys
import typer
from typer.testing import CliRunner
from multigrain.cli.app import app
from multigrain.cli.main import register_commands

register_commands()

def paths(command, prefix):
    yield prefix
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from paths(sub, [*prefix, name])

runner = CliRunner()
shown, failed = [], []
for path in paths(typer.main.get_command(app), []):
    outcome = runner.invoke(app, [*path, "--help"])
    (shown if outcome.exit_code == 0 and "Usage" in outcome.output else failed).append(path)
print(json.dumps({"shown": shown, "failed": failed, "modules": sorted(sys.modules)}))
"""


def test_every_command_help_loads_no_heavy_library():
    environment = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", EVERY_HELP], capture_output=True, text=True, timeout=120,
        env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["failed"] == []
    shown = {" ".join(path) for path in report["shown"]}
    assert {"", "embed", "find-duplicates", "index build", "train", "serve"} <= shown
    assert heavy(set(report["modules"])) == []


#: What `multigrain embed` with the built-in model must not import: torchvision's import
#: brings in torch._dynamo and sympy, together more than torch's own import.
NOT_FOR_EMBEDDING = ("torchvision", "torch._dynamo", "torch._inductor", "sympy")


def test_embed_with_the_builtin_model_loads_no_torchvision(tmp_path):
    from PIL import Image

    image = tmp_path / "image.jpg"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    result = run_cli("embed", str(image), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    modules = imported_modules(result.stderr)
    assert "multigrain.inference.embed" in modules  # the report is read as meant
    assert sorted(name for name in modules if name.startswith(NOT_FOR_EMBEDDING)) == []
    assert (tmp_path / "out" / "descriptors.npy").is_file()
