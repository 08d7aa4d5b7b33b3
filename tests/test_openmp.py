"""openmp.py: the `multigrain` command's threads wait passively unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from multigrain.runtime.openmp import SETTING, prefer_passive_waiting


def test_passive_unless_set():
    environment: dict[str, str] = {}
    assert prefer_passive_waiting(environment) == "PASSIVE"
    assert environment == {SETTING: "PASSIVE"}
    mine = {SETTING: "ACTIVE"}
    assert prefer_passive_waiting(mine) == "ACTIVE" and mine == {SETTING: "ACTIVE"}


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_loads_torch_with_the_policy(given, expected):
    environment = {key: value for key, value in os.environ.items() if key != SETTING}
    if given is not None:
        environment[SETTING] = given
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "info"], capture_output=True, text=True,
        timeout=120, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"threads wait: {expected} ({SETTING})" in result.stdout.splitlines()
