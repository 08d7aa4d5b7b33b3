"""Host names, the serve command's token sources and allowed hosts, absolute index paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from multigrain.cli.serve_access import allowed_hosts, resolve_token
from multigrain.cli.stored_paths import absolute_paths, indexed_forms
from multigrain.runtime.errors import MultiGrainError
from multigrain.service.guards import host_allowed, host_name, token_matches
from multigrain.service.loading import warn_of_missing_relative_paths


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8000", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:8000", "::1"),
     ("[::1]", "::1"), ("::1", "::1"), ("photos.example:443", "photos.example"), ("", "")],
)  # fmt: skip
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_host_allowed() -> None:
    allowed = ["127.0.0.1", "localhost", "::1", "*.photos.example"]
    assert host_allowed("localhost:8000", allowed) and host_allowed("[::1]:80", allowed)
    assert host_allowed("a.photos.example", allowed)
    assert not host_allowed("photos.example.evil", allowed)
    assert not host_allowed("evil.example:8000", allowed) and not host_allowed("", allowed)
    assert host_allowed("anything", ["*"])


def test_token_matches() -> None:
    assert token_matches("Bearer abc", "abc")
    assert not token_matches("Bearer abcd", "abc") and not token_matches(None, "abc")


def test_token_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    assert resolve_token(None, token_file, {"MULTIGRAIN_TOKEN": "env"}) == "from-file"
    assert resolve_token(None, None, {"MULTIGRAIN_TOKEN": "env"}) == "env"
    assert resolve_token(None, None, {}) is None
    assert capsys.readouterr().err == ""
    assert resolve_token("cli", None, {"MULTIGRAIN_TOKEN": "env"}) == "cli"
    assert "--token-file" in capsys.readouterr().err
    for blank in ("", "  "):
        with pytest.raises(MultiGrainError, match="MULTIGRAIN_TOKEN is set but empty"):
            resolve_token(None, None, {"MULTIGRAIN_TOKEN": blank})
    token_file.write_text("\n")
    with pytest.raises(MultiGrainError, match="is empty"):
        resolve_token(None, token_file, {})
    with pytest.raises(MultiGrainError, match="cannot read"):
        resolve_token(None, tmp_path / "absent", {})
    with pytest.raises(MultiGrainError, match="not both"):
        resolve_token("x", token_file, {})


def test_allowed_hosts() -> None:
    assert allowed_hosts("127.0.0.1", []) == ["127.0.0.1", "localhost", "::1"]
    assert allowed_hosts("192.168.1.5", ["photos.lan"]) == [
        "192.168.1.5", "127.0.0.1", "localhost", "::1", "photos.lan",
    ]  # fmt: skip
    import socket

    assert socket.gethostname() in allowed_hosts("0.0.0.0", [])


def test_index_paths_are_stored_absolute_and_found_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    stored = absolute_paths(["photos/a.png", "/elsewhere/b.png"], tmp_path / "emb")
    assert stored == [str(tmp_path / "photos" / "a.png"), "/elsewhere/b.png"]
    assert capsys.readouterr().err == ""
    absolute_paths(["photos/missing.png"], tmp_path / "emb")
    assert "do not exist" in capsys.readouterr().err
    # an old index stores relative paths, a new one absolute ones: both are found
    assert indexed_forms(["photos/a.png"], ["photos/a.png"]) == ["photos/a.png"]
    assert indexed_forms(["photos/a.png"], stored) == [stored[0]]


def test_an_old_index_of_relative_paths_served_elsewhere_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        warn_of_missing_relative_paths(["photos/a.png"], tmp_path / "index")
    assert caplog.records == []  # served from the folder it was built in: as before
    monkeypatch.chdir(os.sep)
    with caplog.at_level(logging.WARNING):
        warn_of_missing_relative_paths(["photos/a.png"], tmp_path / "index")
    assert "start the server in that folder" in caplog.text
