"""Issue 16 against `multigrain serve` run as a user runs it: a subprocess on a loopback port.

Each test reproduces one reported failure of the service: an edit from the command line
undone by the server's next save, a chunked upload spooled whole before its 413, decodes
of large PNGs growing the memory without bound, a blank token, cross-origin form posts and
foreign Host headers accepted, thumbnails of an index built with relative paths gone when
the server starts elsewhere, and temporary uploads of a crashed server never removed.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from service_server import chunked_upload  # benchmarks/, on pytest's pythonpath

from multigrain.inference.embed import embed_in_memory
from multigrain.inference.store import EmbeddingMetadata, merge_shards, shard_name, write_shard
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.search.index_store import load_index
from multigrain.service.decode_budget import default_budget

RESOLUTION = 64
MAX_PIXELS = 4_000_000  # 2000 x 2000
MAX_UPLOAD_MB = 1
TOKEN = "file-token-0123"
STARTUP_S = 120


def _png(seed: int, width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _large_png(side: int) -> bytes:
    """A side x side RGB gradient: a small file that decodes to side^2 x 3 bytes or more."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multigrain", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


class Server(NamedTuple):
    base: str
    port: int
    process: subprocess.Popen
    root: Path  # where the index was built (its relative paths start there)


def _start(args: list[str], *, cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    """`multigrain serve ARGS --port PORT` in `cwd`; returns once /health answers."""
    log = (cwd / f"serve-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "multigrain", "serve", *args, "--port", str(port)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            raise AssertionError((cwd / f"serve-{port}.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/model.pt, root/photos/*.png and root/index, built by `multigrain index build`
    run in root from an embed output whose paths are relative (photos/img0.png ...)."""
    root = tmp_path_factory.mktemp("hardening")
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3).eval()
    save_checkpoint(
        root / "model.pt",
        {"model_state": model.state_dict(), "architecture": model.architecture(),
         "classes": ["cat", "dog", "fish"]},
    )  # fmt: skip
    (root / "photos").mkdir()
    relative = []
    for seed in range(5):
        (root / "photos" / f"img{seed}.png").write_bytes(_png(seed))
        relative.append(f"photos/img{seed}.png")
    descriptors, kept, failures = embed_in_memory(
        model, [root / p for p in relative], resolution=RESOLUTION, device=torch.device("cpu")
    )
    assert not failures and len(kept) == len(relative)
    metadata = EmbeddingMetadata(
        model="", resolution=RESOLUTION, exponent=float(model.pool.p), whitened=False,
        dim=model.embedding_dim, precision="fp32",
    )  # fmt: skip
    embeddings = root / "embeddings"
    (embeddings / "shards").mkdir(parents=True)
    write_shard(embeddings / "shards" / shard_name(0, 0), descriptors.numpy(), relative, metadata)
    merge_shards(embeddings, relative, metadata)
    result = _run("index", "build", "embeddings", "-o", "index", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def open_server(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without a token, started in another folder than the index was built in.

    Before it starts, its data folder holds the temporary uploads of a server that was
    killed: a file of the old flat layout and one of a per-server folder.
    """
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    data = built / "data"
    (data / "tmp" / "dead-server").mkdir(parents=True)
    stale = [data / "tmp" / "0123abcd.upload", data / "tmp" / "dead-server" / "4567ef.upload"]
    for path in stale:
        path.write_bytes(b"\x89PNG half an upload")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MULTIGRAIN_TOKEN"}
    args = ["--index", str(built / "index"), "--data-dir", str(data), "-c",
            str(built / "model.pt"), "--max-pixels", str(MAX_PIXELS),
            "--max-upload-mb", str(MAX_UPLOAD_MB)]  # fmt: skip
    process = _start(args, cwd=elsewhere, env=env, port=port)
    try:
        yield Server(f"http://127.0.0.1:{port}", port, process, built)
    finally:
        _stop(process)


def _upload(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("q.png", data, "application/octet-stream")}


# --------------------------------------------------------------------------- item 3
def test_cli_edit_of_a_served_index_is_refused_not_lost(open_server: Server) -> None:
    """`index remove` while `serve` holds the index: before, it succeeded and the server's
    next save brought the image back; now it is refused, naming the server's pid."""
    removed = "photos/img1.png"
    result = _run("index", "remove", "index", removed, cwd=open_server.root)
    added = httpx.post(f"{open_server.base}/index", files=_upload(_png(77)))
    assert added.status_code == 200, added.text  # the server saves the index again
    on_disk = load_index(open_server.root / "index")
    if result.returncode == 0:  # the remove was acknowledged: the save must not undo it
        assert all(not p.endswith(removed) for p in on_disk.paths), "lost update"
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"pid {open_server.process.pid}" in message
    assert "POST /index" in message and "DELETE /index/" in message and "stop" in message
    assert any(p.endswith(removed) for p in on_disk.paths)  # nothing half-done either
    assert added.json()["id"] in on_disk.ids.tolist()
    build = _run("index", "build", "embeddings", "-o", "index", cwd=open_server.root)
    assert build.returncode == 2 and f"pid {open_server.process.pid}" in build.stderr


# --------------------------------------------------------------------------- item 4
def _written_bytes(pid: int) -> int:
    """Bytes the process has written so far (files and sockets), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def test_chunked_oversize_upload_is_refused_while_streaming(open_server: Server) -> None:
    """Before: the whole chunked body was spooled to a temporary file, then 413."""
    total = 96 * 2**20
    written = _written_bytes(open_server.process.pid)
    sent, status = chunked_upload(open_server.port, "/search", total, timeout=30)
    spooled = _written_bytes(open_server.process.pid) - written
    print(f"sent {sent} bytes, the server wrote {spooled}, answer {status!r}")
    assert sent < 24 * 2**20, f"the server read {sent} bytes of an oversized body"
    assert spooled < 2 * MAX_UPLOAD_MB * 2**20, f"the server wrote {spooled} bytes"
    assert status in ("", "HTTP/1.1 413 Request Entity Too Large", "HTTP/1.1 413 Content Too Large")
    assert httpx.get(f"{open_server.base}/health").status_code == 200


# --------------------------------------------------------------------------- item 5
def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_concurrent_large_decodes_stay_within_the_pixel_budget(open_server: Server) -> None:
    """8 concurrent 2000 x 2000 PNGs: before, all decoded at once (~36 MB each); now the
    decodes in flight hold at most one image at the pixel limit (the default budget)."""
    pid, base = open_server.process.pid, open_server.base
    data = _large_png(2000)
    assert httpx.post(f"{base}/search", files=_upload(data), timeout=120).status_code == 200
    before = _resident_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes(pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: httpx.post(f"{base}/search", files=_upload(data), timeout=120),
                range(8),
            ))  # fmt: skip
    finally:
        done.set()
        sampler.join()
    assert [a.status_code for a in answers] == [200] * 8
    budget = default_budget(MAX_PIXELS)  # one RGB image at the pixel limit
    growth = peak - before
    print(f"RSS {before / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB")
    assert growth < budget + 48 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- item 6
def test_a_blank_token_is_refused_at_start(built: Path, tmp_path: Path) -> None:
    """Before: MULTIGRAIN_TOKEN="" served with authentication silently off."""
    env = {**os.environ, "MULTIGRAIN_TOKEN": ""}
    port = free_port()
    command = [sys.executable, "-m", "multigrain", "serve", "--index", str(built / "index"),
               "--data-dir", str(tmp_path / "data"), "-c", str(built / "model.pt"),
               "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("a blank MULTIGRAIN_TOKEN was accepted: the server started")
    assert process.returncode == 2
    assert "MULTIGRAIN_TOKEN" in stderr and "empty" in stderr and "Traceback" not in stderr
    blank_file = tmp_path / "token"
    blank_file.write_text("\n")
    command += ["--token-file", str(blank_file)]
    env.pop("MULTIGRAIN_TOKEN")
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and str(blank_file) in refused.stderr


def test_token_on_the_command_line_warns_that_ps_shows_it(tmp_path: Path) -> None:
    result = _run("serve", "--index", str(tmp_path / "absent"), "--data-dir",
                  str(tmp_path / "data"), "--token", "abc", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2  # no index there; the warning comes first
    assert "--token-file" in result.stderr and "MULTIGRAIN_TOKEN" in result.stderr
    assert "ps" in result.stderr


def test_cross_origin_form_posts_are_refused(open_server: Server) -> None:
    """Before: with no token, a page on any site could add images by posting a form."""
    base = open_server.base
    before = httpx.get(f"{base}/health").json()["images"]
    for header in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"},
                   {"Origin": "null"}):  # fmt: skip
        answer = httpx.post(f"{base}/index", files=_upload(_png(5)), headers=header)
        assert answer.status_code == 403, answer.text
        assert "origin" in answer.json()["detail"].lower()
        gone = httpx.delete(f"{base}/index/0", headers=header)
        assert gone.status_code == 403
    assert httpx.get(f"{base}/health").json()["images"] == before
    own = {"Origin": base}
    answer = httpx.post(f"{base}/index", files=_upload(_png(6)), headers=own)
    assert answer.status_code == 200, answer.text
    search = httpx.post(f"{base}/search", files=_upload(_png(6)), headers={"Origin": base})
    assert search.status_code == 200


def test_foreign_host_headers_are_refused(open_server: Server) -> None:
    """DNS rebinding: before, a request for evil.example reaching 127.0.0.1 was answered."""
    base, port = open_server.base, open_server.port
    foreign = httpx.get(f"{base}/health", headers={"Host": f"evil.example:{port}"})
    assert foreign.status_code == 400
    assert "--allowed-host" in foreign.json()["detail"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert httpx.get(f"{base}/health", headers={"Host": host}).status_code == 200


@pytest.fixture(scope="module")
def token_server(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose token comes from --token-file."""
    folder = tmp_path_factory.mktemp("token-server")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    from multigrain.search.index_store import save_index

    save_index(load_index(built / "index"), folder / "index")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MULTIGRAIN_TOKEN"}
    args = ["--index", str(folder / "index"), "--data-dir", str(folder / "data"), "-c",
            str(built / "model.pt"), "--token-file", str(token_file),
            "--max-upload-mb", str(MAX_UPLOAD_MB)]  # fmt: skip
    process = _start(args, cwd=built, env=env, port=port)
    try:
        yield Server(f"http://127.0.0.1:{port}", port, process, built)
    finally:
        _stop(process)


def test_token_file_and_the_token_is_checked_before_the_body(token_server: Server) -> None:
    base, port, pid = token_server.base, token_server.port, token_server.process.pid
    assert TOKEN not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert httpx.post(f"{base}/index", files=_upload(_png(8))).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{base}/index", files=_upload(_png(8)), headers=auth).status_code == 200
    # a body under the byte limit, but without the token: refused before it is read
    written = _written_bytes(pid)
    sent, status = chunked_upload(port, "/index", 900 * 1024, timeout=30)
    assert status in ("", "HTTP/1.1 401 Unauthorized")
    assert _written_bytes(pid) - written < 64 * 1024


# --------------------------------------------------------------------------- item 8
def test_thumbnails_of_relative_paths_when_served_from_elsewhere(open_server: Server) -> None:
    """The index was built in `root` from relative paths; the server runs in another
    folder. Before: every /thumb of those images was a 410."""
    index = load_index(open_server.root / "index")
    built_rows = [i for i, p in zip(index.ids, index.paths, strict=True) if "photos" in p]
    assert len(built_rows) >= 4
    for image_id in built_rows:
        thumb = httpx.get(f"{open_server.base}/thumb/{image_id}")
        assert thumb.status_code == 200, thumb.text
        assert thumb.headers["content-type"] == "image/jpeg"


def test_stale_temporary_uploads_are_removed_at_start(open_server: Server) -> None:
    """Files a killed server left in data/tmp: before, they stayed forever."""
    tmp = open_server.root / "data" / "tmp"
    leftovers = [p for p in tmp.rglob("*.upload")]
    assert leftovers == []
    assert not (tmp / "dead-server").exists()
