"""File names that plain text files cannot hold (issue 16, item 7).

A line break, a tab, quotes, undecodable bytes: `embed` (and `--resume`), `index build` and
`search` give every name back exactly as the file system spells it, or refuse it by name.
The model is the built-in one; the images are tiny.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_pattern, run_main, run_main_output

from multigrain.data.listing import list_images
from multigrain.inference.store import load_embeddings, read_failures
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.index_store import load_index

NEWLINE = "line\nbreak.png"
TAB = "tab\there.png"
SEPARATOR = (
    "line\u2028separator\rreturn.png"  # JSON leaves U+2028 as it is; str.splitlines breaks it
)
QUOTES = 'say "cheese" \\ again.png'
UNDECODABLE = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8


def write_images(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, name in enumerate(names):
        make_pattern(rng, index % 3, 40).save(root / name, format="PNG")
    return root


def failure_records(output: Path) -> int:
    """The number of records in the failure lists (one per line in the current format)."""
    return sum(len(file.read_bytes().splitlines()) for file in output.glob("failures-r*"))


def test_a_line_break_in_a_name_survives_embed_index_and_search(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "photos", ["plain.png", NEWLINE, TAB, QUOTES, SEPARATOR])
    out, index = tmp_path / "out", tmp_path / "index"
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0")
    assert code == 0, err
    expected = [str(path) for path in list_images(folder)]
    embedded = load_embeddings(out)
    assert embedded.paths == expected
    assert embedded.descriptors.shape[0] == len(expected) == 5
    code, err = run_main("index", "build", str(out), "-o", str(index))
    assert code == 0, err
    assert load_index(index).paths == expected
    # every image finds itself, under its exact name
    code, stdout, err = run_main_output("search", str(index), str(out), "-k", "1", "--json")
    assert code == 0, err
    answers = [json.loads(line) for line in stdout.splitlines()]
    assert [answer["query"] for answer in answers] == expected
    assert [answer["results"][0]["path"] for answer in answers] == expected
    # the text output keeps one line per query and one per result, the name escaped
    code, stdout, err = run_main_output("search", str(index), str(out), "-k", "1")
    assert code == 0, err
    assert len(stdout.splitlines()) == 2 * len(expected)
    assert repr(str(folder / NEWLINE)) in stdout.splitlines()


def test_a_failed_name_with_a_tab_is_not_retried_on_resume(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "photos", ["good.png"])
    broken = [folder / "bad\tname.jpg", folder / "bad\nname.jpg"]
    for path in broken:
        path.write_text("not an image")
    out = tmp_path / "out"
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0")
    assert code == 3, err
    assert set(read_failures(out)) == {str(path) for path in broken}
    assert failure_records(out) == 2
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0", "--resume")
    assert code == 0, err  # nothing retried, so nothing failed again
    assert "skipped" not in err
    assert set(read_failures(out)) == {str(path) for path in broken}
    assert failure_records(out) == 2
    assert load_embeddings(out).paths == [str(folder / "good.png")]


def test_an_undecodable_name_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    try:
        write_images(folder, ["plain.png", UNDECODABLE])
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    out, index = tmp_path / "out", tmp_path / "index"
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0")
    assert code == 3, err
    assert "Traceback" not in err
    [skipped] = [line for line in err.splitlines() if line.startswith("skipped")]
    assert "caf\\xe9.png" in skipped and "UTF-8" in skipped and "rename" in skipped
    assert load_embeddings(out).paths == [str(folder / "plain.png")]
    code, err = run_main("index", "build", str(out), "-o", str(index))
    assert code == 0, err
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0", "--resume")
    assert code == 0, err
    assert failure_records(out) == 1


def test_outputs_of_earlier_versions_are_still_read(tmp_path: Path) -> None:
    """paths.txt (one name a line) and failures-r*.tsv (name TAB reason), as written before
    JSON lines; an output a line break damaged is repaired by `embed --resume`."""
    folder = write_images(tmp_path / "photos", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert run_main("embed", str(folder), "-o", str(out), "--workers", "0")[0] == 0
    names = load_embeddings(out).paths
    (out / "paths.jsonl").unlink()
    (out / "paths.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    (out / "failures-r000.tsv").write_text(f"{folder / 'gone.jpg'}\tcannot identify\n")
    assert load_embeddings(out).paths == names
    assert read_failures(out) == {str(folder / "gone.jpg"): "cannot identify"}
    # a name with a line break made paths.txt longer than descriptors.npy
    (out / "paths.txt").write_text("a\nb\nc\n", encoding="utf-8")
    with pytest.raises(MultiGrainError, match="--resume"):
        load_embeddings(out)
    code, err = run_main("embed", str(folder), "-o", str(out), "--workers", "0", "--resume")
    assert code == 0, err
    assert load_embeddings(out).paths == names
    assert not (out / "paths.txt").exists()


def test_a_failure_list_cut_short_by_a_crash(tmp_path: Path) -> None:
    """A last record cut short is ignored (its image is tried again) and the next record
    starts on a line of its own; a damaged record elsewhere is named."""
    from multigrain.inference.path_lists import failure_line, open_failure_list

    listing = tmp_path / "failures-r000.jsonl"
    whole = failure_line("a\nb.jpg", "truncated")
    listing.write_text(whole + failure_line("c.jpg", "empty")[:9], encoding="utf-8")
    assert read_failures(tmp_path) == {"a\nb.jpg": "truncated"}
    with open_failure_list(listing) as handle:
        handle.write(failure_line("d\u2028e.jpg", "not an image"))
    assert read_failures(tmp_path) == {"a\nb.jpg": "truncated", "d\u2028e.jpg": "not an image"}
    listing.write_text("{oops\n" + whole, encoding="utf-8")
    with pytest.raises(MultiGrainError, match="line 1, is not a failure record"):
        read_failures(tmp_path)
