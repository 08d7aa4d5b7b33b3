"""openmp.py: the `multigrain` command's threads wait passively on a busy machine only,
unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from multigrain.runtime.openmp import LIBGOMP_DEFAULT, SETTING, choose_wait_policy


def test_passive_on_a_busy_machine_only():
    busy: dict[str, str] = {}
    assert choose_wait_policy(busy, load=2.0, cores=2) == "PASSIVE"
    assert busy == {SETTING: "PASSIVE"}
    quiet: dict[str, str] = {}
    assert choose_wait_policy(quiet, load=1.9, cores=2) == LIBGOMP_DEFAULT
    assert quiet == {}  # libgomp's own default: the variable stays unset


@pytest.mark.parametrize("load", [0.0, 9.0])
def test_the_users_value_wins(load):
    mine = {SETTING: "ACTIVE"}
    assert choose_wait_policy(mine, load=load, cores=2) == "ACTIVE" and mine == {SETTING: "ACTIVE"}


@pytest.mark.parametrize("given", [None, "ACTIVE", "PASSIVE"])
def test_the_command_loads_torch_with_the_policy(given):
    environment = {key: value for key, value in os.environ.items() if key != SETTING}
    if given is not None:
        environment[SETTING] = given
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "info"], capture_output=True, text=True,
        timeout=120, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stdout.splitlines() if line.startswith("threads wait: ")]
    if given is not None:
        assert shown == [f"threads wait: {given} ({SETTING})"]
    else:  # chosen from the load average at start: either is right, nothing else is
        assert shown[0] in {
            f"threads wait: PASSIVE ({SETTING})",
            f"threads wait: {LIBGOMP_DEFAULT} ({SETTING})",
        }
