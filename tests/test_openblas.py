"""openblas.py: faiss' OpenBLAS gets the kernel for this CPU unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from multigrain.runtime.openblas import (
    SETTING,
    faiss_openblas_core,
    kernel_for,
    prefer_native_kernel,
)

ZEN4 = {"sse3", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}


def test_kernel_for_the_cpu_flags():
    assert kernel_for(ZEN4) == "SKYLAKEX"
    assert kernel_for({"avx", "avx2", "fma"}) == "HASWELL"
    assert kernel_for({"avx2"}) is None  # no FMA: leave OpenBLAS' own choice
    assert kernel_for({"sse3"}) is None


def test_set_unless_the_user_set_it():
    environment: dict[str, str] = {}
    assert prefer_native_kernel(environment, ZEN4) == "SKYLAKEX"
    assert environment == {SETTING: "SKYLAKEX"}
    mine = {SETTING: "HASWELL"}
    assert prefer_native_kernel(mine, ZEN4) == "HASWELL" and mine == {SETTING: "HASWELL"}
    nothing: dict[str, str] = {}
    assert prefer_native_kernel(nothing, {"sse3"}) is None and nothing == {}


@pytest.mark.skipif(faiss_openblas_core() is None, reason="faiss without a bundled OpenBLAS")
def test_faiss_openblas_reads_the_setting():
    """The variable reaches the OpenBLAS faiss loads (read once, when it loads)."""
    code = "from multigrain.runtime.openblas import faiss_openblas_core as c; print(c())"
    environment = {**os.environ, SETTING: "HASWELL"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Haswell"
