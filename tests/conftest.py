"""Shared fixtures: small real image files written by the tests themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

# int8 trunks quantised by the tests (and the commands they run) are cached here, not in
# the user's ~/.cache (multigrain.inference.int8_cache)
os.environ["MULTIGRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="multigrain-test-cache-")
# `auto` among the float precisions, as before int8 became auto's choice on CPUs with VNNI
# and no AMX: quantising each test's model would double the suite's time. The tests of
# int8 by default (test_precision.py, test_int8_default.py) unset it.
os.environ["MULTIGRAIN_PRECISION"] = "float"


def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """`python -m multigrain ARGS` in a subprocess; asserts its exit status."""
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def sigint_as_in_a_terminal() -> None:
    """A ``preexec_fn`` for a child that a test stops with SIGINT: the default disposition,
    as in a terminal's foreground job. A shell starting a job in the background (``cmd &``
    in a script, as a CI runner may) sets SIGINT to ignored, every descendant inherits it,
    and Python then installs no KeyboardInterrupt handler: Ctrl-C would reach nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A loopback TCP port nobody listens on now, for a server a test starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_main(*args: str) -> tuple[int, str]:
    """`multigrain ARGS` through main() in this process -> (exit status, stderr)."""
    code, _, stderr = run_main_output(*args)
    return code, stderr


def run_main_output(*args: str) -> tuple[int, str, str]:
    """`multigrain ARGS` through main() in this process -> (exit status, stdout, stderr)."""
    import contextlib
    import io

    from multigrain.cli import main as cli_main

    saved = sys.argv
    sys.argv = ["multigrain", *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(cli_main, "reexec_with_allocator", lambda: None)
                try:
                    cli_main.main()
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else 1
                else:
                    code = 0
    finally:
        sys.argv = saved
    return code, stdout.getvalue(), stderr.getvalue()


def make_pattern(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    """A textured image whose class is visible: stripes horizontal (0), vertical (1), checks (2)."""
    y, x = np.mgrid[0:size, 0:size]
    period = rng.uniform(4, 9)
    phase = rng.uniform(0, 2 * np.pi)
    if label == 0:
        wave = np.sin(2 * np.pi * y / period + phase)
    elif label == 1:
        wave = np.sin(2 * np.pi * x / period + phase)
    else:
        wave = np.sin(2 * np.pi * x / period + phase) * np.sin(2 * np.pi * y / period)
    colour = rng.uniform(0.3, 1.0, size=3)
    pixels = (0.5 + 0.5 * wave[..., None]) * colour * 255
    pixels += rng.normal(0, 10, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_folder(
    root: Path, *, classes: int = 2, per_class: int = 12, size: int = 40
) -> Path:
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = make_pattern(rng, label, size)
            if index % 2:
                image.save(folder / f"{index:03d}.jpg", quality=90)
            else:
                image.save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 12 real PNG/JPEG files of 40x40 px."""
    return write_image_folder(tmp_path_factory.mktemp("images"), classes=2, per_class=12)


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """The Debian Fashion-MNIST folder; under CI its absence fails instead of skipping."""
    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists():
        message = (
            f"Fashion-MNIST not found at {FASHION_MNIST_ROOT}: "
            "sudo apt-get install dataset-fashion-mnist (make test does it)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return FASHION_MNIST_ROOT


@pytest.fixture(scope="session")
def larger_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes x 24 real PNG/JPEG files of 40x40 px."""
    return write_image_folder(tmp_path_factory.mktemp("images48"), classes=2, per_class=24)


@pytest.fixture(scope="session")
def three_class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes (horizontal, vertical stripes, checks) x 12 real PNG/JPEG files of 48x48 px."""
    return write_image_folder(tmp_path_factory.mktemp("images3"), classes=3, per_class=12, size=48)
