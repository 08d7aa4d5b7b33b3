"""The command line: bad input gives one clear line on stderr and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "multigrain", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--trunk", "resnet7"], ["unknown trunk 'resnet7'", "resnet50"]),
        (["--lambda", "1.5"], ["lambda", "[0, 1]"]),
        (["--repeats", "0"], ["repeats m", ">= 1"]),
        (["--batch-size", "10"], ["not divisible by the number of repeats m=3"]),
        (["--schedule", "linear"], ["--schedule 'linear'", "step, cosine"]),
    ],
)
def test_bad_training_settings(image_folder, tmp_path, args, fragments):
    result = run_cli(
        "train",
        "--data",
        str(image_folder),
        "--output-dir",
        str(tmp_path),
        "--max-steps",
        "1",
        "--batch-size",
        "12",
        *args,
    )
    assert_one_line_error(result, *fragments)


def test_empty_and_missing_data_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("train", "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "run"))
    assert_one_line_error(result, str(tmp_path / "empty"))
    result = run_cli("train", "--data", str(tmp_path / "absent"), "-o", str(tmp_path / "run"))
    assert_one_line_error(result, str(tmp_path / "absent"))


def test_unreadable_data_directory(tmp_path):
    import os

    if os.geteuid() == 0:
        # root reads everything; make the directory unreadable in the only way root can't bypass
        target = tmp_path / "file-not-dir"
        target.write_text("not a folder")
    else:
        target = tmp_path / "locked"
        target.mkdir(mode=0)
    result = run_cli("train", "--data", str(target), "-o", str(tmp_path / "run"))
    assert_one_line_error(result, str(target))


def test_missing_fashion_mnist(tmp_path):
    result = run_cli(
        "train", "--dataset", "fashion-mnist", "--data", str(tmp_path), "-o", str(tmp_path / "r")
    )
    assert_one_line_error(result, "apt-get install dataset-fashion-mnist")


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "probe", "demo"):
        assert command in result.stdout


def test_evaluate_benchmarks_mirror_the_readers():
    """`evaluate --benchmark` offers every standard reader, plus the built-in photos."""
    from multigrain.cli.evaluate import EvaluationBenchmark
    from multigrain.data.standard import READERS, BenchmarkName

    offered = {choice.value for choice in EvaluationBenchmark} - {"builtin"}
    assert offered == {name.value for name in BenchmarkName} == {name.value for name in READERS}


def test_comma_separated_option_values():
    from multigrain.cli.app import comma_list

    assert comma_list(int)("224, 320,500") == [224, 320, 500]
    assert comma_list(float)("1,2.5") == [1.0, 2.5]
    assert comma_list(int)((30, 60)) == [30, 60]  # a default, as Typer hands it over
    with pytest.raises(ValueError, match="comma-separated list of int"):
        comma_list(int)("a,b")
