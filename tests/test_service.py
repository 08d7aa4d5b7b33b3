"""The HTTP service under a real uvicorn server on 127.0.0.1 (CPU, random-init ResNet-18)."""

from __future__ import annotations

import contextlib
import io
import os
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
import uvicorn
from conftest import free_port
from PIL import Image

from multigrain.inference.embed import embed_in_memory
from multigrain.inference.store import EmbeddingMetadata
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import load_index, save_index
from multigrain.search.threshold import CalibratedThreshold, save_threshold
from multigrain.service.app import create_app
from multigrain.service.state import Service

CLIENTS = 8
REQUESTS_PER_CLIENT = 200  # every third one an add
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESOLUTION = 64
MAX_UPLOAD = 256 * 1024


def _png_bytes(seed: int, *, portrait: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    pixels[: 8 * (seed + 1) % 48] = rng.integers(0, 256, size=3, dtype=np.uint8)
    if portrait:  # 64 x 48: another input shape, so another forward within a batch
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Served(NamedTuple):
    base: str
    images: list[Path]
    service: Service


@contextlib.contextmanager
def _serving(app: object) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A random-init ResNet-18 checkpoint, five PNGs and an index of them (root/index)."""
    root = tmp_path_factory.mktemp("service")
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3).eval()
    checkpoint = root / "model.pt"
    save_checkpoint(
        checkpoint,
        {
            "model_state": model.state_dict(),
            "architecture": model.architecture(),
            "classes": ["cat", "dog", "fish"],
        },
    )
    images = []
    for seed in range(5):
        path = root / "images" / f"img{seed}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_png_bytes(seed))
        images.append(path)
    descriptors, paths, failures = embed_in_memory(
        model, images, resolution=RESOLUTION, device=torch.device("cpu")
    )
    assert not failures
    metadata = EmbeddingMetadata(
        model="", resolution=RESOLUTION, exponent=float(model.pool.p), whitened=False,
        dim=model.embedding_dim, precision="fp32",
    )  # fmt: skip
    save_index(ImageIndex.build(descriptors.numpy(), paths, metadata=metadata), root / "index")
    return checkpoint, images


@pytest.fixture(scope="module")
def server(model_files: tuple[Path, list[Path]]) -> Iterator[Served]:
    checkpoint, images = model_files
    root = checkpoint.parent
    app = create_app(
        checkpoint=checkpoint,
        index_folder=root / "index",
        data_dir=root / "data",
        token=TOKEN,
        max_upload_bytes=MAX_UPLOAD,
        max_pixels=1_000_000,
        request_timeout=60,
    )
    with _serving(app) as base:
        yield Served(base, images, app.state.service)


def _upload(data: bytes, name: str = "q.png") -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, "application/octet-stream")}


def test_search_finds_the_query_itself_and_classify_embed(server: Served) -> None:
    base, images, _ = server
    for path in images:
        hits = httpx.post(f"{base}/search", files=_upload(path.read_bytes()), data={"k": "3"})
        assert hits.status_code == 200, hits.text
        assert [h["path"] for h in hits.json()][:1] == [str(path)]
        assert hits.json()[0]["score"] == pytest.approx(1.0, abs=1e-4)
    top = httpx.post(f"{base}/classify", files=_upload(images[0].read_bytes())).json()
    assert {p["label"] for p in top} == {"cat", "dog", "fish"}
    assert sum(p["score"] for p in top) == pytest.approx(1.0, abs=1e-4)
    embedding = httpx.post(f"{base}/embed", files=_upload(images[0].read_bytes())).json()
    assert embedding["dim"] == 512
    assert np.linalg.norm(embedding["descriptor"]) == pytest.approx(1.0, abs=1e-4)


def test_concurrent_searches_and_adds(server: Served) -> None:
    base, _, service = server
    before = httpx.get(f"{base}/health").json()["images"]
    forwards, embedded = service.batcher.stats.forwards, service.batcher.stats.images

    def client(worker: int) -> list[int]:
        added = []
        with httpx.Client(base_url=base, timeout=60) as http:
            for step in range(REQUESTS_PER_CLIENT):
                data = _png_bytes(1000 + worker * REQUESTS_PER_CLIENT + step)
                if step % 3 == 0:
                    response = http.post("/index", files=_upload(data), headers=AUTH)
                    assert response.status_code == 200, response.text
                    added.append(response.json()["id"])
                else:
                    response = http.post("/search", files=_upload(data), data={"k": "5"})
                    assert response.status_code == 200, response.text
        return added

    with ThreadPoolExecutor(CLIENTS) as pool:
        added = [i for ids in pool.map(client, range(CLIENTS)) for i in ids]
    adds_per_client = len(range(0, REQUESTS_PER_CLIENT, 3))
    assert len(set(added)) == len(added) == CLIENTS * adds_per_client
    assert httpx.get(f"{base}/health").json()["images"] == before + len(added)
    # the clients' requests shared forwards
    assert service.batcher.stats.images - embedded == CLIENTS * REQUESTS_PER_CLIENT
    assert service.batcher.stats.forwards - forwards < CLIENTS * REQUESTS_PER_CLIENT
    thumb = httpx.get(f"{base}/thumb/{added[0]}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # every add is in the index on disk too
    on_disk = load_index(service.index_folder)
    assert set(added) <= set(on_disk.ids.tolist()) and len(on_disk) == before + len(added)
    hits = httpx.post(f"{base}/search", files=_upload(_png_bytes(1000)), data={"k": "1"}).json()
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_batched_answers_equal_one_at_a_time_answers(server: Served) -> None:
    """Concurrent /embed and /classify of two image shapes == the same requests one by one."""
    base, _, service = server
    uploads = [_png_bytes(500 + i, portrait=i % 2 == 1) for i in range(12)]

    def ask(job: tuple[str, bytes]) -> list[float]:
        endpoint, data = job
        answer = httpx.post(f"{base}/{endpoint}", files=_upload(data), timeout=60)
        assert answer.status_code == 200, answer.text
        if endpoint == "embed":
            return list(answer.json()["descriptor"])
        return [p["score"] for p in sorted(answer.json(), key=lambda p: p["index"])]

    jobs = [("embed", data) for data in uploads] + [("classify", data) for data in uploads]
    forwards = service.batcher.stats.forwards
    alone = [ask(job) for job in jobs]  # one request at a time: one image per forward
    assert service.batcher.stats.forwards - forwards == len(jobs)
    forwards = service.batcher.stats.forwards
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(ask, jobs))
    assert service.batcher.stats.forwards - forwards < len(jobs)  # some were batched
    for one, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched, one, rtol=1e-4, atol=1e-5)


def test_request_timeout_is_a_503_and_a_late_add_is_not_applied(
    model_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    checkpoint, images = model_files
    save_index(load_index(checkpoint.parent / "index"), tmp_path / "index")
    app = create_app(checkpoint=checkpoint, index_folder=tmp_path / "index",
                     data_dir=tmp_path / "data", token=TOKEN, request_timeout=0.001)  # fmt: skip
    service: Service = app.state.service
    data = images[0].read_bytes()
    with _serving(app) as base:
        before = httpx.get(f"{base}/health").json()["images"]
        for endpoint in ("search", "embed", "classify"):
            late = httpx.post(f"{base}/{endpoint}", files=_upload(data))
            assert late.status_code == 503, late.text
            assert "--request-timeout" in late.json()["detail"]
            assert late.headers["retry-after"] == "1"
        late_add = httpx.post(f"{base}/index", files=_upload(data), headers=AUTH)
        assert late_add.status_code == 503
        assert httpx.get(f"{base}/health").json()["images"] == before
        assert not any((tmp_path / "data" / "uploads").iterdir())
        assert not any((tmp_path / "data" / "tmp").rglob("*.upload"))
        # requests that gave up are dropped before their forward (a batch waits 5 ms first)
        time.sleep(0.2)
        assert service.batcher.stats.images == 0 and service.batcher.stats.dropped <= 4
    assert len(load_index(tmp_path / "index")) == before


def test_a_calibrated_threshold_marks_matches(
    model_files: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    checkpoint, images = model_files
    save_index(load_index(checkpoint.parent / "index"), tmp_path / "index")
    calibration = CalibratedThreshold(
        threshold=0.9999, target_precision=0.9, precision=1.0, recall=1.0, num_queries=1,
        num_pairs=1, num_positive_pairs=1, num_ground_truth=1, k=1, background=None,
        beta=1.0, neighbours=1, ground_truth="gt.csv",
    )  # fmt: skip
    save_threshold(calibration, tmp_path / "index")
    app = create_app(checkpoint=checkpoint, index_folder=tmp_path / "index",
                     data_dir=tmp_path / "data", token=None)  # fmt: skip
    with _serving(app) as base:
        assert httpx.get(f"{base}/health").json()["threshold"] == 0.9999
        hits = httpx.post(f"{base}/search", files=_upload(images[1].read_bytes())).json()
        assert [hit["match"] for hit in hits] == [True] + [False] * (len(hits) - 1)
        assert hits[0]["path"] == str(images[1])


def test_bad_uploads_are_refused_with_a_reason(server: Served) -> None:
    base, images, _ = server
    big = httpx.post(f"{base}/search", files=_upload(b"\0" * (MAX_UPLOAD + 1)))
    assert big.status_code == 413
    huge = httpx.post(f"{base}/search", files=_upload(b"\0" * (4 * MAX_UPLOAD)))
    assert huge.status_code == 413
    text = httpx.post(f"{base}/search", files=_upload(b"hello, not an image", "notes.txt"))
    assert text.status_code == 422 and "not an image" in text.json()["detail"]
    jpeg = io.BytesIO()
    Image.open(images[0]).save(jpeg, format="JPEG")
    truncated = httpx.post(f"{base}/classify", files=_upload(jpeg.getvalue()[:400], "t.jpg"))
    assert 400 <= truncated.status_code < 500 and "t.jpg" in truncated.json()["detail"]
    bomb = io.BytesIO()
    Image.new("L", (2000, 1000)).save(bomb, format="PNG")
    assert httpx.post(f"{base}/search", files=_upload(bomb.getvalue())).status_code == 413


def test_edits_need_the_token_and_remove_works(server: Served) -> None:
    base, images, _ = server
    data = images[0].read_bytes()
    assert httpx.post(f"{base}/index", files=_upload(data)).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{base}/index", files=_upload(data), headers=wrong).status_code == 401
    assert httpx.delete(f"{base}/index/0").status_code == 401
    added = httpx.post(f"{base}/index", files=_upload(data, "../../etc/x.png"), headers=AUTH)
    assert added.status_code == 200
    stored = Path(added.json()["path"])
    assert stored.parent.name == "uploads" and stored.suffix == ".png" and stored.exists()
    count = added.json()["images"]
    removed = httpx.delete(f"{base}/index/{added.json()['id']}", headers=AUTH)
    assert removed.status_code == 200 and removed.json()["images"] == count - 1
    assert not stored.exists()
    assert httpx.delete(f"{base}/index/{added.json()['id']}", headers=AUTH).status_code == 404


def test_web_page_and_docs(server: Served) -> None:
    base, _, _ = server
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "MultiGrain" in page.text and "http" not in page.text.split("<body>")[1].split("docs")[0]
    assert httpx.get(f"{base}/docs").status_code == 200
    assert "/search" in httpx.get(f"{base}/openapi.json").json()["paths"]


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MULTIGRAIN_TEST_ARTIFACTS", "runs/test-artifacts"))


def test_real_browser_uploads_an_image_and_sees_results(server: Served) -> None:
    """Debian's Chromium, headless, driven by Playwright: pick a file, see thumbnails."""
    if not CHROMIUM.exists():
        message = "Chromium not found: sudo apt-get install chromium (make test does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    base, images, _ = server
    flags = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        try:
            page = browser.new_page()
            page.goto(f"{base}/")
            page.set_input_files("#file", str(images[0]))
            page.wait_for_selector("#results img", timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')]"
                ".every(img => img.complete && img.naturalWidth > 0)",
                timeout=60_000,
            )
            assert page.locator("#results img").count() >= 1
            assert page.locator("#classes li").count() >= 1
            assert images[0].name in page.locator("#results").inner_html()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "web_page.png").stat().st_size > 1000
