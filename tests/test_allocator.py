"""allocator.py: the `multigrain` command re-runs itself under tcmalloc/jemalloc when installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multigrain.runtime.allocator import SETTING, find_allocator, preload_environment
from multigrain.runtime.errors import MultiGrainError


@pytest.fixture
def installed() -> str:
    """The library `auto` picks; under CI its absence fails (make test installs tcmalloc)."""
    library = find_allocator("auto")
    if library is None:
        message = "no tcmalloc/jemalloc: sudo apt-get install libtcmalloc-minimal4 (make test)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return library


def _run(*args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in a subprocess without the caller's allocator settings, plus `env`."""
    environment = {k: v for k, v in os.environ.items() if k not in (SETTING, "LD_PRELOAD")}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120,
        env={**environment, **env},
    )  # fmt: skip
    assert result.returncode == expect, result.stderr
    return result


def _python(code: str, **env: str) -> str:
    return _run("-c", code, **env).stdout


def _cli_info(**env: str) -> dict[str, str]:
    """`multigrain info` in a subprocess -> {key: value}."""
    result = _run("-m", "multigrain", "info", **env)
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def test_settings(tmp_path):
    assert find_allocator("system") is None
    library = tmp_path / "libmine.so"
    library.write_bytes(b"")
    assert find_allocator(str(library)) == str(library)
    with pytest.raises(MultiGrainError, match=f"{SETTING}=/no/such.so: no such file"):
        find_allocator("/no/such.so")


def test_a_missing_library_is_one_line_of_error():
    result = _run("-m", "multigrain", "info", expect=2, **{SETTING: "/no/such.so"})
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {SETTING}=/no/such.so: no such file; give the path of a malloc library "
        "(e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4), 'auto' or 'system'"
    )


def test_preload_environment_prepends_once(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    env = preload_environment({"LD_PRELOAD": "/opt/other.so", "X": "1"}, setting=str(library))
    assert env["LD_PRELOAD"] == f"{library} /opt/other.so" and env["X"] == "1"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)
    # already preloaded (by the user, or by a parent multigrain): left as it is
    assert preload_environment(env, setting=str(library)) == env
    assert preload_environment({"LD_PRELOAD": "/x/libjemalloc.so.2"}, setting=str(library)) == {
        "LD_PRELOAD": "/x/libjemalloc.so.2"
    }
    assert preload_environment({"A": "b"}, setting="system") == {"A": "b"}


def test_command_runs_under_the_allocator(installed):
    info = _cli_info()
    assert Path(installed).name.split(".so")[0] in info["allocator"], info
    assert info["allocator"].startswith(("libtcmalloc", "libjemalloc"))
    assert _cli_info(**{SETTING: "system"})["allocator"].startswith("glibc malloc")


def test_reexec_loads_the_library_and_restores_ld_preload(installed):
    code = (
        "import os, subprocess\n"
        "from multigrain.runtime.allocator import reexec_with_allocator, loaded_allocator\n"
        "reexec_with_allocator()\n"
        "print(loaded_allocator())\n"
        "print(repr(os.environ.get('LD_PRELOAD')))\n"
        "child = 'import os; print(repr(os.environ.get(\"LD_PRELOAD\")))'\n"
        "import sys\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True,"
        " text=True).stdout.strip())\n"
        "print(sorted(k for k in os.environ if k.startswith('_MULTIGRAIN')))\n"
    )
    loaded, mine, childs, markers = _python(code).splitlines()
    assert Path(installed).name.split(".so")[0] in loaded
    assert mine == childs == "None"  # the caller had none: subprocesses start without it
    assert markers == "[]"
    # a caller's own preload is kept for the job's subprocesses
    loaded, mine, childs, _ = _python(code, LD_PRELOAD="libm.so.6").splitlines()
    assert Path(installed).name.split(".so")[0] in loaded
    assert mine == childs == "'libm.so.6'"
