"""`embed`: batching by shape, messy folders, resume, and torchrun sharding."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multigrain.data.listing import list_images
from multigrain.inference.embed import embed_collection
from multigrain.inference.store import (
    EmbeddingMetadata,
    list_shards,
    load_embeddings,
    read_failures,
)
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import cpu_supports_bf16

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SIZES = [(64, 48), (48, 64), (64, 48), (40, 40), (64, 48), (80, 30), (48, 64), (40, 40), (33, 70)]


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    base = np.sin(x / rng.uniform(3, 9))[..., None] * np.cos(y / rng.uniform(3, 9))[..., None]
    pixels = 128 + 100 * base * rng.uniform(0.3, 1, size=3) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        sub = root / ("a" if index % 2 else "b")
        sub.mkdir(exist_ok=True)
        photo(rng, width, height).save(sub / f"{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def model() -> MultiGrain:
    torch.manual_seed(0)
    return MultiGrain(trunk="resnet18", num_classes=3).eval()


def metadata(model: MultiGrain, resolution: int = 64) -> EmbeddingMetadata:
    return EmbeddingMetadata(
        model="test", resolution=resolution, exponent=3.0, whitened=False,
        dim=model.embedding_dim, precision="fp32",
    )  # fmt: skip


def run(model, paths, output, **options):
    return embed_collection(
        model, paths, output_dir=output, metadata=metadata(model), context=CPU, progress=False,
        **options,
    )  # fmt: skip


def test_batched_equals_one_at_a_time(model, photo_folder, tmp_path):
    paths = list_images(photo_folder)
    run(model, paths, tmp_path / "batched", batch_size=3)
    run(model, paths, tmp_path / "single", batch_size=1)
    batched = load_embeddings(tmp_path / "batched")
    single = load_embeddings(tmp_path / "single")
    assert batched.paths == single.paths == [str(p) for p in paths]
    np.testing.assert_allclose(batched.descriptors, single.descriptors, atol=2e-6)
    norms = np.linalg.norm(batched.descriptors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # different images give different descriptors: the comparison is not vacuous
    assert np.abs(batched.descriptors[0] - batched.descriptors[1]).max() > 1e-3


def test_crash_and_resume_match_an_uninterrupted_run(model, photo_folder, tmp_path, monkeypatch):
    import multigrain.inference.embed as embed_module

    paths = list_images(photo_folder)
    run(model, paths, tmp_path / "straight", batch_size=2, shard_size=2)
    original = embed_module.embed_batch
    calls = {"count": 0}

    def crashing(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 3:
            raise KeyboardInterrupt  # as if the job were killed
        return original(*args, **kwargs)

    monkeypatch.setattr(embed_module, "embed_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(model, paths, tmp_path / "resumed", batch_size=2, shard_size=2)
    monkeypatch.setattr(embed_module, "embed_batch", original)
    done_before = len(list_shards(tmp_path / "resumed"))
    assert 0 < done_before
    with pytest.raises(MultiGrainError, match="--resume"):
        run(model, paths, tmp_path / "resumed", batch_size=2, shard_size=2)
    report = run(model, paths, tmp_path / "resumed", batch_size=2, shard_size=2, resume=True)
    assert report.num_already_done == 2 * done_before
    assert report.num_already_done + report.num_embedded == len(paths)
    straight = load_embeddings(tmp_path / "straight")
    resumed = load_embeddings(tmp_path / "resumed")
    assert resumed.paths == straight.paths
    np.testing.assert_allclose(resumed.descriptors, straight.descriptors, atol=2e-6)


def test_resume_refuses_other_settings(model, photo_folder, tmp_path):
    paths = list_images(photo_folder)
    run(model, paths, tmp_path)
    other = EmbeddingMetadata(
        model="test", resolution=96, exponent=3.0, whitened=False, dim=512, precision="fp32"
    )
    with pytest.raises(MultiGrainError, match="other settings"):
        embed_collection(
            model, paths, output_dir=tmp_path, metadata=other, context=CPU, resume=True,
            progress=False,
        )  # fmt: skip


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(1)
    good = {}
    good["plain.jpg"] = photo(rng, 60, 40)
    good["cmyk.jpg"] = photo(rng, 50, 50).convert("CMYK")
    good["rgba.png"] = photo(rng, 40, 50).convert("RGBA")
    sixteen = np.asarray(photo(rng, 30, 40).convert("L"), dtype=np.uint16) * 257
    good["sixteen.png"] = Image.fromarray(sixteen)
    for name, image in good.items():
        image.save(root / name)
    rotated = photo(rng, 64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "rotated.jpg", exif=exif)
    full = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(photo_bytes(rng)[:400])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image")
    bomb_png(root / "bomb.png")
    assert full
    good_names = set(good) | {"rotated.jpg"}
    bad_names = {"truncated.jpg", "empty.jpg", "notes.jpg", "bomb.png"}
    return root, good_names, bad_names


def photo_bytes(rng: np.random.Generator) -> bytes:
    import io

    buffer = io.BytesIO()
    photo(rng, 120, 90).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_checkpoint(model: MultiGrain, path: Path) -> Path:
    return save_checkpoint(
        path,
        {
            "model_state": model.state_dict(),
            "architecture": model.architecture(),
            "classes": ["a", "b", "c"],
        },
    )


def test_cli_on_a_messy_folder(model, messy_folder, tmp_path):
    root, good, bad = messy_folder
    checkpoint = write_checkpoint(model, tmp_path / "model.pt")
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "embed", str(root), "-c", str(checkpoint),
         "-o", str(tmp_path / "out"), "--resolution", "64", "--max-pixels", "50000000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    embedded = load_embeddings(tmp_path / "out")
    assert {Path(p).name for p in embedded.paths} == good
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert {Path(line.split()[1].rstrip(":")).name for line in skipped} == bad
    reasons = read_failures(tmp_path / "out")
    assert {Path(p).name for p in reasons} == bad
    assert all(reason.strip() for reason in reasons.values())
    bomb_reason = next(r for p, r in reasons.items() if p.endswith("bomb.png"))
    assert "pixels" in bomb_reason
    assert embedded.metadata.resolution == 64 and embedded.metadata.dim == 512
    # the default precision is recorded as what ran, never as "auto"
    assert embedded.metadata.precision == ("bf16" if cpu_supports_bf16() else "fp32")


@pytest.mark.slow
def test_torchrun_splits_the_collection(model, photo_folder, tmp_path):
    checkpoint = write_checkpoint(model, tmp_path / "model.pt")
    common = [str(photo_folder), "-c", str(checkpoint), "--resolution", "64", "--device", "cpu",
              "--precision", "fp32"]  # fmt: skip
    single = subprocess.run(
        [sys.executable, "-m", "multigrain", "embed", *common, "-o", str(tmp_path / "one")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "multigrain", "embed", *common, "-o", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    shards = list_shards(tmp_path / "two")
    assert {p.name.split("-")[1] for p in shards} == {"r000", "r001"}
    from multigrain.inference.store import read_shard

    per_rank = [read_shard(p).paths for p in shards]
    flat = [p for paths in per_rank for p in paths]
    assert len(flat) == len(set(flat)) == len(SIZES)
    one, two = load_embeddings(tmp_path / "one"), load_embeddings(tmp_path / "two")
    assert one.paths == two.paths
    np.testing.assert_allclose(one.descriptors, two.descriptors, atol=2e-6)


def test_a_job_from_before_whitening_fingerprints_resumes(tmp_path) -> None:
    """Shards written without a whitening fingerprint continue under one; any other
    difference is still refused."""
    from dataclasses import replace

    from multigrain.inference.store import SHARD_FOLDER, check_metadata, write_shard
    from multigrain.runtime.errors import MultiGrainError
    from multigrain.search.descriptors import EmbeddingMetadata

    old = EmbeddingMetadata(model="m@sha256:0", resolution=160, exponent=4.0, whitened=True,
                            dim=2, precision="fp32")  # fmt: skip
    (tmp_path / SHARD_FOLDER).mkdir()
    write_shard(tmp_path / SHARD_FOLDER / "part-r000-00000.npz",
                np.zeros((1, 2), np.float32), ["a.jpg"], old)  # fmt: skip
    check_metadata(tmp_path, replace(old, whitening="sha256:abc"))
    # the same rule lets `index add` put new descriptors into an index of old ones
    assert replace(old, whitening="sha256:abc").matches(old)
    assert not replace(old, whitening="sha256:abc").matches(replace(old, whitening="sha256:d"))
    with pytest.raises(MultiGrainError, match="other settings"):
        check_metadata(tmp_path, replace(old, whitening="sha256:abc", resolution=224))


# ---- issue 16, item 8: an interrupted job says what it saved and how to continue --------------


def embed_command(listing: Path, out: Path, *extra: str) -> list[str]:
    """`multigrain embed` of a list file, one image per batch and per shard."""
    return [sys.executable, "-m", "multigrain", "embed", str(listing), "-o", str(out),
            "--batch-size", "1", "--shard-size", "1", *extra]  # fmt: skip


def interrupted_embed(command: list[str], out: Path, waiting: int, signum: int) -> tuple[int, str]:
    """Run `command`, an embed job whose last image is a FIFO nobody writes to: once it has
    embedded the `waiting` images before it, it waits on it forever; send `signum` then, as
    a user would: SIGINT to the process group (Ctrl-C in a terminal), SIGTERM to the
    process (`kill`). Returns (exit status, stderr)."""
    import os
    import signal
    import time

    from conftest import sigint_as_in_a_terminal

    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=sigint_as_in_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list_shards(out)) < waiting:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def uninterrupted(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`multigrain embed` of the photos in one go, as the interrupted job runs it."""
    root = tmp_path_factory.mktemp("uninterrupted")
    listing = root / "photos.txt"
    listing.write_text("".join(f"{image}\n" for image in list_images(photo_folder)))
    straight = subprocess.run(
        embed_command(listing, root / "out"), capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr
    return root / "out"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_name", "status", "workers"), [("SIGINT", 130, "1"), ("SIGTERM", 143, "0")]
)
def test_an_interrupted_embed_says_how_to_continue(
    photo_folder: Path, uninterrupted: Path, tmp_path: Path, signal_name: str, status: int,
    workers: str,
) -> None:  # fmt: skip
    """One line (how much is saved, --resume), the signal's exit status, no traceback; the
    job then resumes to the very descriptors of an uninterrupted run."""
    import os
    import shutil
    import signal

    images = list_images(photo_folder)
    job = tmp_path / "job"
    job.mkdir()
    copies = [job / f"{index:02d}.png" for index in range(len(images))]
    for image, copy in zip(images[:-1], copies, strict=False):
        shutil.copy(image, copy)
    os.mkfifo(copies[-1])  # the job waits here
    listing = tmp_path / "job.txt"
    listing.write_text("".join(f"{copy}\n" for copy in copies))
    out = tmp_path / "out"
    command = embed_command(listing, out, "--workers", workers)
    code, stderr = interrupted_embed(command, out, len(images) - 1, getattr(signal, signal_name))
    assert code == status, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("embed:")]  # fmt: skip
    assert len(lines) == 1, stderr
    assert f"{len(images) - 1} of {len(images)} images" in lines[0], lines[0]
    assert "--resume" in lines[0] and str(out) in lines[0], lines[0]
    # the same command with --resume, once the last image is a file, finishes the job
    copies[-1].unlink()
    shutil.copy(images[-1], copies[-1])
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(images) - 1} already done)" in resumed.stdout
    one, two = load_embeddings(out), load_embeddings(uninterrupted)
    assert one.paths == [str(copy) for copy in copies]
    assert one.descriptors.tobytes() == two.descriptors.tobytes()  # bit for bit
