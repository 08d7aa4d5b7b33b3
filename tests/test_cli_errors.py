"""A user's mistake on the command line: one line on stderr, exit status 2, nothing left behind.

Issue 15, item 6. Most cases run `multigrain`'s main() in this process (fast); the ones the
issue reported run it as a subprocess, as a user would. A model, where one is needed, is the
built-in one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pattern, run_main, sigint_as_in_a_terminal

from multigrain.cli import main as cli_main
from multigrain.data.inference_loading import decoded_batches, worker_message
from multigrain.inference.store import load_embeddings
from multigrain.runtime.errors import MultiGrainError


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny real PNG files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(3):
        make_pattern(rng, index, 40).save(root / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def embedded(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`multigrain embed` of the three images (built-in model)."""
    out = tmp_path_factory.mktemp("embedded") / "out"
    code, err = run_main("embed", str(images), "-o", str(out), "--workers", "0")
    assert code == 0, err
    return out


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "multigrain", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit status 2, no traceback, one line on stderr holding every fragment."""
    assert code == 2, stderr
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def listing(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


# ---- 1. every numeric option has a range, checked while the arguments are parsed ------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ("embed {images} -o {out} -s 0", ["--resolution", "greater than or equal to 1"]),
        ("embed {images} -o {out} -s -5", ["--resolution", "greater than or equal to 1"]),
        ("classify {images} -s 0", ["--resolution", "greater than or equal to 1"]),
        ("embed {images} -o {out} -p 0", ["--exponent", "0 is not > 0", "above 0"]),
        ("classify {images} -p -2", ["--exponent", "-2 is not > 0"]),
        ("embed {images} -o {out} --batch-size 0", ["--batch-size", "equal to 1"]),
        ("embed {images} -o {out} --shard-size 0", ["--shard-size", "1"]),
        ("embed {images} -o {out} --workers -1", ["--workers", "equal to 0"]),
        ("embed {images} -o {out} --max-pixels 0", ["--max-pixels", "equal to 1"]),
        ("classify {images} --top-k 0", ["--top-k", "equal to 1"]),
        ("dedup {out} --threshold 1.5", ["--threshold", "less than or equal to 1"]),
        ("dedup {out} --threshold -1.5", ["--threshold", "greater than or equal to -1"]),
        ("find-duplicates {images} -o {out} --precision 1.2", ["--precision", "0.999"]),
        ("find-duplicates {images} -o {out} --threshold 2.5", ["--threshold", "2"]),
        (
            "calibrate-threshold --index {out} --queries {out} --ground-truth {out} --precision 1",
            ["--precision", "1 is not in (0, 1)"],
        ),
        ("search {out} {out} -k 0", ["-k", "equal to 1"]),
        ("search {out} {out} --neighbours 0", ["--neighbours", "equal to 1"]),
        ("calibrate -c {out} --resolutions 224,0", ["--resolutions", "0 in '224,0'", ">= 1"]),
        ("calibrate -c {out} --exponents 3,-1", ["--exponents", "every value must be > 0"]),
        ("whiten {images} -c {out} -o {out}.pt --dim 0", ["--dim", "1"]),
        ("index build {out} -o {out} --train-size 0", ["--train-size", "1"]),
        ("serve --index {out} --data-dir {out} --port 70000", ["--port", "65535"]),
        ("train --data {images} -o {out} --seed -1", ["--seed", "equal to 0"]),
        ("train --data {images} -o {out} --checkpoint-every 0", ["--checkpoint-every", "1"]),
        ("demo -o {out} --steps 0", ["--steps", "1"]),
        ("export -c {out} -o {out}.onnx --example-size 0", ["--example-size", "1"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_numeric_option_out_of_range(images: Path, tmp_path: Path, args, fragments) -> None:
    before = listing(tmp_path)
    out = tmp_path / "out"
    filled = [arg.format(images=images, out=out) for arg in args.split()]
    code, err = run_main(*filled)
    line = assert_one_line_error(code, err, *fragments)
    assert "--help" in line  # the fix: the option's range is in the command's --help
    assert listing(tmp_path) == before


@pytest.mark.parametrize("resolution", ["0", "-5"])
def test_bad_resolution_as_the_issue_saw_it(images: Path, tmp_path: Path, resolution) -> None:
    """`embed -s 0` was a ZeroDivisionError traceback, `-s -5` a DataLoader worker's."""
    result = run_cli("embed", str(images), "-o", str(tmp_path / "out"), "-s", resolution)
    assert_one_line_error(result.returncode, result.stderr, "--resolution", "1")
    assert not (tmp_path / "out").exists()


# ---- 2. an error raised in a DataLoader worker reads as one raised here ---------------------


def test_worker_error_has_the_original_message(images: Path) -> None:
    with pytest.raises(MultiGrainError) as raised:
        list(
            decoded_batches(
                [images / "0.png"],
                resolution=-5,
                batch_size=2,
                num_workers=1,
                max_pixels=10**8,
                on_failure=lambda index, reason: None,
            )  # fmt: skip
        )
    assert str(raised.value) == "longest_side must be >= 1 pixel, got -5"
    assert worker_message(MultiGrainError("plain")) == "plain"


def test_worker_error_through_the_cli(images: Path, tmp_path: Path, monkeypatch) -> None:
    """A MultiGrainError in the decoding worker of `embed`: one line, no folder left behind."""
    import multigrain.data.inference_loading as loading

    def refuse(*args, **kwargs):
        raise MultiGrainError("cannot decode: install the codec (apt-get install libfoo)")

    monkeypatch.setattr(loading, "decode_image", refuse)  # inherited by the forked worker
    out = tmp_path / "new" / "nested" / "out"
    code, err = run_main("embed", str(images), "-o", str(out), "--workers", "1")
    lines = [line for line in err.splitlines() if line.strip() and "embed:" not in line]
    assert code == 2 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert lines == ["error: cannot decode: install the codec (apt-get install libfoo)"], err
    assert not (tmp_path / "new").exists()  # the outermost folder it created is gone


# ---- 3. a failed command removes the output folder it created, and only that ----------------


def test_failure_keeps_a_folder_that_existed(images: Path, tmp_path: Path, monkeypatch) -> None:
    import multigrain.data.inference_loading as loading

    def refuse(*args, **kwargs):
        raise MultiGrainError("cannot decode")

    monkeypatch.setattr(loading, "decode_image", refuse)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_main("embed", str(images), "-o", str(out), "--workers", "0")
    assert code == 2, err
    assert (out / "notes.txt").read_text() == "mine"


def test_find_duplicates_of_unreadable_files_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_text("not an image")
    (folder / "b.jpg").write_text("not an image")
    before = listing(tmp_path)
    code, err = run_main("find-duplicates", str(folder), "-o", str(tmp_path / "groups"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and "fewer than 2 images" in errors[0], err
    assert listing(tmp_path) == before


def test_index_build_of_a_missing_output_leaves_nothing(tmp_path: Path) -> None:
    before = listing(tmp_path)
    code, err = run_main("index", "build", str(tmp_path / "absent"), "-o", str(tmp_path / "idx"))
    assert_one_line_error(code, err, "not a finished embedding output", "multigrain embed")
    assert listing(tmp_path) == before


# ---- 4. --resume with other inputs refuses instead of dropping earlier rows -----------------


def test_resume_with_other_inputs_is_refused(images: Path, embedded: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    make_pattern(np.random.default_rng(1), 1, 40).save(other)
    listing_file = tmp_path / "other.txt"
    listing_file.write_text(f"{other}\n")
    code, err = run_main("embed", str(listing_file), "-o", str(embedded), "--resume")
    assert_one_line_error(
        code, err, "descriptors of 3 images", "3 of them not among the 1 inputs", "--output"
    )
    assert len(load_embeddings(embedded).paths) == 3


def test_resume_with_more_inputs_keeps_every_row(
    images: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("grown") / "out"
    first = sorted(str(path) for path in images.glob("*.png"))
    listing_file = out.parent / "first.txt"
    listing_file.write_text("".join(f"{path}\n" for path in first[:2]))
    assert run_main("embed", str(listing_file), "-o", str(out), "--workers", "0")[0] == 0
    listing_file.write_text("".join(f"{path}\n" for path in first))
    code, err = run_main("embed", str(listing_file), "-o", str(out), "--workers", "0", "--resume")
    assert code == 0, err
    assert load_embeddings(out).paths == first


# ---- 5. the other items: -c DIR, evaluate's benchmarks, help texts, files vs folders -------


def test_checkpoint_folder_that_is_not_a_bundle(images: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    code, err = run_main("embed", str(images), "-o", str(tmp_path / "out"), "-c", str(folder))
    assert_one_line_error(code, err, f"{folder} is a folder but not a model bundle", "bundle.json")
    assert not (tmp_path / "out").exists()
    code, err = run_main("export", "-c", str(folder), "-o", str(tmp_path / "m.onnx"))
    assert_one_line_error(code, err, "is a folder but not a model bundle")
    code, err = run_main("evaluate", "--benchmark", "builtin", "--root", str(tmp_path),
                         "-c", str(folder))  # fmt: skip
    assert_one_line_error(code, err, f"{folder} is a folder, not a weights file", "checkpoint.pt")


def test_evaluate_lists_builtin(tmp_path: Path) -> None:
    result = run_cli("evaluate", "--help", env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0 and "builtin" in result.stdout
    code, err = run_main("evaluate", "--benchmark", "nope", "--root", str(tmp_path), "-c", "x")
    assert_one_line_error(code, err, "'nope' is not one of", "'disc21', 'builtin'")


def test_experiments_with_two_sizes_is_refused(tmp_path: Path) -> None:
    code, err = run_main("experiments", "--quick", "--long", "-o", str(tmp_path / "study"))
    assert_one_line_error(code, err, "--quick and --long", "give one")
    assert not (tmp_path / "study" / "runs").exists()  # nothing trained


def test_experiments_steps_needs_long_and_whole_curve_points(tmp_path: Path) -> None:
    code, err = run_main("experiments", "--steps", "1024", "-o", str(tmp_path / "study"))
    assert_one_line_error(code, err, "--steps sets the length of the --long schedule", "--long")
    code, err = run_main("experiments", "--long", "--steps", "100", "-o", str(tmp_path / "s"))
    assert_one_line_error(code, err, "100 steps do not split into 8 curve points")
    assert not (tmp_path / "study" / "runs").exists() and not (tmp_path / "s" / "runs").exists()


def test_train_help_at_80_columns() -> None:
    result = run_cli("train", "--help", env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "also write the" in result.stdout  # --checkpoint-every-steps, cut at 80 columns


def test_every_option_has_help() -> None:
    import typer.main

    from multigrain.cli.app import app

    cli_main.register_commands()

    def commands(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, [*path, name])
        if not getattr(command, "commands", None):
            yield " ".join(path), command

    silent = [
        f"{path} {param.name}"
        for path, command in commands(typer.main.get_command(app), [])
        for param in command.params
        if not param.help
    ]
    assert silent == []


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ("embed {images} -o {tmp}/x.txt", ["x.txt looks like a file name", "folder"]),
        ("embed {images} -o {file}", ["is a file, but a folder is expected"]),
        ("index build {tmp} -o {tmp}/idx.json", ["idx.json looks like a file name"]),
        ("find-duplicates {images} -o {tmp}/groups.json", ["groups.json looks like"]),
        ("train --data {images} -o {file}", ["is a file, but a folder"]),
        ("dedup {tmp} -o {tmp}/x.txt", ["x.txt does not end in .json or .csv", "x.json"]),
        ("dedup {tmp} -o {tmp}", ["is a folder, but a file is expected"]),
        ("dedup {tmp} --html {tmp}/sheet.txt", ["does not end in .html"]),
        ("export -c {file} -o {tmp}/model.txt", ["does not end in .onnx or .pt"]),
        ("calibrate -c {file} --output {tmp}/p.txt", ["does not end in .json"]),
        (
            "evaluate --benchmark builtin --root {tmp} -c {file} --output {tmp}/r.txt",
            ["does not end in .json"],
        ),
        ("whiten {images} -c {file} -o {tmp}", ["is a folder, but a file"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_file_where_a_folder_is_expected_and_back(
    images: Path, tmp_path: Path, args, fragments
) -> None:
    existing = tmp_path / "existing"
    existing.write_text("a file")
    before = listing(tmp_path)
    filled = [arg.format(images=images, tmp=tmp_path, file=existing) for arg in args.split()]
    code, err = run_main(*filled)
    assert_one_line_error(code, err, *fragments)
    assert listing(tmp_path) == before


@pytest.mark.slow
def test_ctrl_c_in_any_command_says_so(tmp_path: Path) -> None:
    """Issue 16: Typer turned Ctrl-C inside a command into a silent exit 130."""
    import errno
    import signal
    import time

    blocking = tmp_path / "waits.jpg"
    os.mkfifo(blocking)  # classify blocks reading it
    process = subprocess.Popen(
        [sys.executable, "-m", "multigrain", "classify", str(blocking), "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=sigint_as_in_a_terminal,
    )  # fmt: skip
    writer = None
    try:
        # the write end opens (non-blocking) only once a reader has the FIFO open: then the
        # command is past start-up and waiting for the image's bytes
        deadline = time.monotonic() + 300
        while writer is None:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            try:
                writer = os.open(blocking, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                assert error.errno == errno.ENXIO, error
                time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal
        _, stderr = process.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["interrupted (SIGINT): the command stopped before it finished"], stderr
