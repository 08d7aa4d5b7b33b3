"""Image decoding, dataset readers, transforms and the deterministic training loader."""

from __future__ import annotations

import gzip
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multigrain.data import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_CLASSES,
    AugmentationKind,
    AugmentedDataset,
    FashionMNISTImages,
    FileListImages,
    ImageFolderImages,
    LabelledImages,
    Lighting,
    RepeatedAugmentationSampler,
    TrainingBatch,
    collate_training,
    eval_transform,
    load_rgb,
    make_training_loader,
    train_transform,
)
from multigrain.data.transforms import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
from multigrain.runtime.errors import MultiGrainError


def random_rgb(rng: np.random.Generator, width: int = 40, height: int = 30) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- load_rgb


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    """One small file per interesting PIL mode, plus broken files."""
    rng = np.random.default_rng(0)
    rgb = random_rgb(rng)
    names = ["rgb.jpg", "rgb.png", "gray.png", "palette.png", "rgba.png", "cmyk.jpg"]
    names += ["deep.png", "truncated.jpg", "text.jpg"]
    files = {name: tmp_path / name for name in names}
    rgb.save(files["rgb.jpg"], quality=90)
    rgb.save(files["rgb.png"])
    rgb.convert("L").save(files["gray.png"])
    rgb.convert("P").save(files["palette.png"])
    rgb.convert("RGBA").save(files["rgba.png"])
    rgb.convert("CMYK").save(files["cmyk.jpg"])
    deep = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    Image.fromarray(deep).save(files["deep.png"])
    files["truncated.jpg"].write_bytes(files["rgb.jpg"].read_bytes()[:300])
    files["text.jpg"].write_text("this is not an image\n")
    return files


@pytest.mark.parametrize(
    ("name", "source_mode"),
    [
        ("rgb.jpg", "RGB"),
        ("rgb.png", "RGB"),
        ("gray.png", "L"),
        ("palette.png", "P"),
        ("rgba.png", "RGBA"),
        ("cmyk.jpg", "CMYK"),
        ("deep.png", "I;16"),
    ],
)
def test_load_rgb_converts_every_mode(
    image_files: dict[str, Path], name: str, source_mode: str
) -> None:
    with Image.open(image_files[name]) as raw:
        assert raw.mode == source_mode
    image = load_rgb(image_files[name])
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_load_rgb_keeps_the_high_byte_of_16_bit_images(image_files: dict[str, Path]) -> None:
    with Image.open(image_files["deep.png"]) as raw:
        deep = np.asarray(raw).astype(np.int64)
    pixels = np.asarray(load_rgb(image_files["deep.png"]))
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], deep >> 8)


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    random_rgb(np.random.default_rng(1), width=40, height=20).save(path, exif=exif)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    assert load_rgb(path).size == (20, 40)


@pytest.mark.parametrize("name", ["truncated.jpg", "text.jpg", "missing.jpg"])
def test_load_rgb_rejects_broken_files(image_files: dict[str, Path], name: str) -> None:
    path = image_files.get(name, image_files["rgb.jpg"].parent / name)
    with pytest.raises(MultiGrainError, match=f"cannot read image {path}"):
        load_rgb(path)


# --------------------------------------------------------------------------- ImageFolder


def test_image_folder_reads_classes_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "cat" / "sub").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    random_rgb(rng).save(tmp_path / "cat" / "b.jpg")
    random_rgb(rng).convert("L").save(tmp_path / "cat" / "sub" / "a.png")
    random_rgb(rng).save(tmp_path / "dog" / "c.JPG", format="JPEG")
    random_rgb(rng).save(tmp_path / ".hidden" / "d.jpg")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    images = ImageFolderImages(tmp_path)
    assert isinstance(images, LabelledImages)
    assert images.classes == ["cat", "dog", "empty"]
    assert [p.relative_to(tmp_path).as_posix() for p in images.paths] == [
        "cat/b.jpg",
        "cat/sub/a.png",
        "dog/c.JPG",
    ]
    assert images.labels == [0, 0, 1]
    assert len(images) == 3
    assert images.load(1).mode == "RGB"


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match=f"{tmp_path / 'nope'} does not exist"):
        ImageFolderImages(tmp_path / "nope")
    a_file = tmp_path / "file.jpg"
    a_file.write_text("x")
    with pytest.raises(MultiGrainError, match="is not a directory"):
        ImageFolderImages(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MultiGrainError, match=f"no images found under {empty}: expected"):
        ImageFolderImages(empty)
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("x")
    with pytest.raises(MultiGrainError, match="no images found under"):
        ImageFolderImages(empty)


def test_one_listing_with_narrower_suffixes(tmp_path: Path) -> None:
    """image_files: any case, sorted, recursive or not, a reader's own suffixes, no link loops."""
    from multigrain.data import listing

    (tmp_path / "sub").mkdir()
    for name in ["b.JPG", "a.webp", "notes.txt", "sub/c.png", "sub/d.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    names = [p.relative_to(tmp_path).as_posix() for p in listing.image_files(tmp_path)]
    assert names == ["a.webp", "b.JPG", "sub/c.png", "sub/d.tif"]
    flat = listing.image_files(tmp_path, recursive=False, suffixes=(".jpg", ".png"))
    assert [p.name for p in flat] == ["b.JPG"]
    assert listing.list_images(tmp_path) == listing.image_files(tmp_path)
    assert listing.image_files(tmp_path / "sub", suffixes=(".gif",)) == []


# --------------------------------------------------------------------------- file lists


def test_file_list_with_integer_labels(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "x.jpg"
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"# comment\na.jpg\t2\n\nsub dir/b c.png 0\n{absolute}   1\n")
    images = FileListImages(list_file)
    assert images.paths == [tmp_path / "a.jpg", tmp_path / "sub dir" / "b c.png", absolute]
    assert images.labels == [2, 0, 1]
    assert images.classes == ["0", "1", "2"]
    other = FileListImages(list_file, root=tmp_path / "images")
    assert other.paths[0] == tmp_path / "images" / "a.jpg"


def test_file_list_with_class_names_loads_images(tmp_path: Path) -> None:
    random_rgb(np.random.default_rng(3)).save(tmp_path / "a.png")
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.png dog\na.png cat\na.png 3\n")
    images = FileListImages(list_file)
    assert images.classes == ["3", "cat", "dog"]
    assert images.labels == [2, 1, 0]
    assert images.load(0).size == (40, 30)


def test_file_list_errors(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="list.txt does not exist"):
        FileListImages(tmp_path / "list.txt")
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.jpg 0\nlonely.jpg\n")
    with pytest.raises(MultiGrainError, match="list.txt line 2: expected '<path> <label>'"):
        FileListImages(list_file)
    list_file.write_text("# nothing\n\n")
    with pytest.raises(MultiGrainError, match="lists no images"):
        FileListImages(list_file)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_root() -> Path:
    if not (DEFAULT_FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file():
        message = (
            f"Fashion-MNIST not installed at {DEFAULT_FASHION_MNIST_ROOT} "
            "(sudo apt-get install dataset-fashion-mnist)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return DEFAULT_FASHION_MNIST_ROOT


def read_raw(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        return np.frombuffer(stream.read(), dtype=np.uint8, offset=header)


@pytest.mark.parametrize(
    ("split", "prefix", "size"), [("train", "train", 60000), ("test", "t10k", 10000)]
)
def test_fashion_mnist_matches_a_direct_read(
    fashion_root: Path, split: str, prefix: str, size: int
) -> None:
    images = FashionMNISTImages(fashion_root, split=split)
    assert len(images) == size
    assert images.images.shape == (size, 28, 28) and images.images.dtype == np.uint8
    assert images.classes == list(FASHION_MNIST_CLASSES) and len(images.classes) == 10
    assert set(images.labels) == set(range(10))
    raw_labels = read_raw(fashion_root / f"{prefix}-labels-idx1-ubyte.gz", 8)
    raw_images = read_raw(fashion_root / f"{prefix}-images-idx3-ubyte.gz", 16)
    assert images.labels[:50] == raw_labels[:50].tolist()
    assert images.labels[-1] == int(raw_labels[-1])
    np.testing.assert_array_equal(np.asarray(images.load(0)), raw_images[:784].reshape(28, 28))
    assert images.load(size - 1).mode == "L"


def test_fashion_mnist_limit(fashion_root: Path) -> None:
    images = FashionMNISTImages(fashion_root, split="test", limit=7)
    assert len(images) == 7 and images.images.shape == (7, 28, 28)
    assert images.labels == FashionMNISTImages(fashion_root, split="test").labels[:7]


def test_fashion_mnist_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTImages(tmp_path)
    with pytest.raises(MultiGrainError, match="unknown Fashion-MNIST split"):
        FashionMNISTImages(tmp_path, split="val")
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    image_file = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(labels, "wb") as stream:
        stream.write(struct.pack(">ii", 2049, 3) + bytes([1, 2, 3]))
    with gzip.open(image_file, "wb") as stream:
        stream.write(struct.pack(">iiii", 1234, 3, 28, 28))
    with pytest.raises(MultiGrainError, match=f"{image_file} has magic number 1234"):
        FashionMNISTImages(tmp_path, split="test")
    with gzip.open(image_file, "wb") as stream:
        stream.write(struct.pack(">iiii", 2051, 3, 28, 28) + bytes(100))
    with pytest.raises(MultiGrainError, match=f"{image_file} holds .* truncated"):
        FashionMNISTImages(tmp_path, split="test")
    with gzip.open(image_file, "wb") as stream:
        stream.write(struct.pack(">iiii", 2051, 2, 28, 28) + bytes(2 * 784))
    with pytest.raises(MultiGrainError, match="2 images but .* 3 labels"):
        FashionMNISTImages(tmp_path, split="test")


# --------------------------------------------------------------------------- transforms


class SyntheticImages:
    """Seeded random RGB/L images with labels ``index % 3``."""

    def __init__(self, count: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, (count, 36, 44, 3), dtype=np.uint8)
        self.labels = [i % 3 for i in range(count)]
        self.classes = ["a", "b", "c"]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        image = Image.fromarray(self.pixels[index])
        return image.convert("L") if index % 2 else image


def test_lighting_matches_the_formula_and_zero_is_identity() -> None:
    image = torch.rand(3, 5, 6)
    assert torch.equal(Lighting(0.0)(image), image)
    torch.manual_seed(4)
    shifted = Lighting(0.1)(image)
    torch.manual_seed(4)
    alpha = (torch.randn(3) * 0.1).tolist()
    for c in range(3):
        shift = sum(
            IMAGENET_EIGENVECTORS[c][j] * alpha[j] * IMAGENET_EIGENVALUES[j] for j in range(3)
        )
        torch.testing.assert_close(shifted[c], image[c] + shift)
    with pytest.raises(MultiGrainError, match="alphastd -1"):
        Lighting(-1)


@pytest.mark.parametrize("kind", list(AugmentationKind))
@pytest.mark.parametrize("input_size", [28, 96])
def test_train_transform_output(kind: AugmentationKind, input_size: int) -> None:
    images = SyntheticImages(2)
    transform = train_transform(kind, input_size=input_size)
    for index in range(2):
        output = transform(images.load(index))
        assert output.shape == (3, input_size, input_size) and output.dtype == torch.float32


def test_crop_scale_depends_on_input_size() -> None:
    def crop_scale(input_size: int) -> tuple[float, float]:
        transform = train_transform("full", input_size=input_size)
        crops = [t for t in transform.transforms if type(t).__name__ == "RandomResizedCrop"]
        return tuple(crops[0].scale)

    assert crop_scale(28) == (0.25, 1.0)
    assert crop_scale(224) == (0.08, 1.0)
    with pytest.raises(MultiGrainError, match="unknown augmentation 'mixup'"):
        train_transform("mixup", input_size=28)


def test_eval_transform_center_crops_grayscale_to_rgb() -> None:
    gray = Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40) % 251)
    output = eval_transform(input_size=24, mean=(0, 0, 0), std=(1, 1, 1))(gray)
    assert output.shape == (3, 24, 24)
    assert torch.equal(output[0], output[1]) and torch.equal(output[1], output[2])
    whole = eval_transform(input_size=30, crop_fraction=1.0, mean=(0, 0, 0), std=(1, 1, 1))(gray)
    expected = torch.from_numpy(np.asarray(gray)[:, 5:35] / 255.0).float()
    torch.testing.assert_close(whole[0], expected)


# --------------------------------------------------------------------------- AugmentedDataset


@pytest.mark.parametrize(
    "kind", [AugmentationKind.FULL, AugmentationKind.AUTOAUGMENT, AugmentationKind.COPY]
)
def test_augmented_dataset_is_deterministic_per_key(kind: AugmentationKind) -> None:
    dataset = AugmentedDataset(SyntheticImages(4), train_transform(kind, input_size=32))
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    image, label, index = dataset[(2, 123)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert (label, index) == (2, 2)
    assert torch.equal(dataset[(2, 123)][0], image)
    assert not torch.equal(dataset[(2, 124)][0], image)
    assert len(dataset) == 4
    # the caller's random streams are untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_batch_fetch_decodes_each_source_once_and_matches_single_fetches() -> None:
    class CountingImages(SyntheticImages):
        def __init__(self, size: int) -> None:
            super().__init__(size)
            self.loads: list[int] = []

        def load(self, index: int) -> Image.Image:
            self.loads.append(index)
            return super().load(index)

    images = CountingImages(4)
    dataset = AugmentedDataset(images, train_transform("copy", input_size=32))
    keys = [(1, 10), (3, 11), (1, 12), (3, 13), (1, 14), (3, 15)]
    batch = dataset.__getitems__(keys)
    assert sorted(images.loads) == [1, 3]
    for (tensor, label, index), key in zip(batch, keys, strict=True):
        single, single_label, single_index = dataset[key]
        assert torch.equal(tensor, single) and (label, index) == (single_label, single_index)
    # the DataLoader uses the batch path
    images.loads.clear()
    sampler = RepeatedAugmentationSampler(4, batch_size=6, num_repeats=3, seed=0)
    next(iter(make_training_loader(dataset, sampler)))
    assert len(images.loads) == 2


def test_collate_and_batch_to() -> None:
    items = [(torch.full((3, 4, 4), float(i)), i % 2, 10 + i) for i in range(3)]
    batch = collate_training(items)
    assert isinstance(batch, TrainingBatch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 4, 4)
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [0, 1, 0]
    assert batch.instance_ids.tolist() == [10, 11, 12]
    moved = batch.to("cpu", non_blocking=True)
    assert torch.equal(moved.images, batch.images)


def loader_batches(num_workers: int) -> list[TrainingBatch]:
    dataset = AugmentedDataset(SyntheticImages(20), train_transform("full", input_size=24))
    sampler = RepeatedAugmentationSampler(len(dataset), batch_size=6, seed=7)
    sampler.set_epoch(1)
    return list(make_training_loader(dataset, sampler, num_workers=num_workers))


def test_loader_is_independent_of_worker_count_and_leaves_global_rng_alone() -> None:
    torch_state = torch.get_rng_state()
    serial = loader_batches(num_workers=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    parallel = loader_batches(num_workers=2)
    assert len(serial) == len(parallel) == 20 // 2
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.instance_ids, b.instance_ids)
    ids = serial[0].instance_ids
    assert torch.equal(ids[::3], ids[1::3]) and torch.equal(ids[::3], ids[2::3])
    assert not torch.equal(serial[0].images[0], serial[0].images[1])  # copies differ


def test_loader_rejects_a_mismatched_sampler() -> None:
    dataset = AugmentedDataset(SyntheticImages(10), train_transform("none", input_size=24))
    sampler = RepeatedAugmentationSampler(9, batch_size=3)
    with pytest.raises(MultiGrainError, match="dataset_size=len"):
        make_training_loader(dataset, sampler)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to pin memory")
def test_loader_pins_training_batches() -> None:
    dataset = AugmentedDataset(SyntheticImages(6), train_transform("none", input_size=24))
    sampler = RepeatedAugmentationSampler(len(dataset), batch_size=6)
    batch = next(iter(make_training_loader(dataset, sampler, pin_memory=True)))
    assert isinstance(batch, TrainingBatch)
    assert batch.images.is_pinned() and batch.instance_ids.is_pinned()
    assert batch.to("cuda", non_blocking=True).images.device.type == "cuda"
