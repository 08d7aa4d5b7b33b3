"""Where the built-in photos come from: Debian packages, and scikit-image's bundled data.

Each source yields candidate images as (key, package, label, group, bytes loader); the
photographic filter and deduplication live in :mod:`multigrain.data.photos.pool`.

Measured on Debian (trixie-era packages), before the photographic filter of ``pool.py``:

- ``opencv-doc``: 154 PNG/JPEG under ``/usr/share/doc/opencv-doc/examples/data``, ~40
  photographs (baboon, fruits, messi5, scenetext...), the rest charts/logos/calibration.
- ``tuxpaint-stamps-default``: ~800 PNG stamps, nearly all transparent cut-outs or drawings;
  ~30 pass the filter (plants, animals, vehicles...). The category folder is the label.
- ``gcompris-qt-data``: no loose images; the photos are WebP files inside Qt ``.rcc``
  bundles. We read ``categorization`` (topics fishes, monuments, renewable, tools),
  ``explore_monuments`` (label monuments), ``explore_*_animals`` (label animals) and
  ``erase`` (33 unlabelled 1920x1080 photos).
- ``libjxl-testdata``: ~85 PNG/JPEG, mostly re-encodings of one flower photo plus colour
  test charts; re-encodings share a group so they never straddle the split.
- scikit-image: the photos shipped in the wheel (astronaut, chelsea, coffee, rocket...).
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from multigrain.data.listing import is_image_name
from multigrain.data.photos.rcc import read_rcc
from multigrain.runtime.errors import MultiGrainError

#: The formats the photo packages ship photos in (every photo source reads only these).
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_GCOMPRIS_RCC = {  # bundle -> label (None: the parent folder is the label)
    "categorization": None,
    "explore_monuments": "monuments",
    "explore_world_animals": "animals",
    "explore_farm_animals": "animals",
    "erase": "",
}
_GCOMPRIS_NO_LABEL = {"others", "alphabets", "numbers"}
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "camera.png",
    "retina.jpg",
    "moon.png",
    "coins.png",
)
DEBIAN_PACKAGES = ("opencv-doc", "tuxpaint-stamps-default", "gcompris-qt-data", "libjxl-testdata")


@dataclass(frozen=True)
class Candidate:
    """One image before filtering; `read()` returns its encoded bytes."""

    key: str  # stable identifier: a system file path, "bundle.rcc:/inner/path" or
    # "scikit-image:data/<name>" (never a path inside a virtual environment)
    package: str
    licence: str
    label: str  # "" when the source gives no class
    group: str  # images of one group (same photo, re-encoded or a stereo pair) split together
    read: Callable[[], bytes]


def package_files(package: str) -> list[Path]:
    """Files installed by a Debian package; MultiGrainError saying how to install it if absent."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as error:
        raise MultiGrainError(
            f"the built-in benchmark needs the Debian package {package}, but dpkg is missing: "
            f"run on Debian/Ubuntu with `apt-get install {package}`"
        ) from error
    if listing.returncode != 0:
        raise MultiGrainError(
            f"the built-in benchmark needs the Debian package {package}: run "
            f"`apt-get install {package}` (or scripts/setup-system.sh)"
        )
    return [Path(line) for line in listing.stdout.splitlines() if Path(line).is_file()]


def package_licence(package: str, files_pattern: str = "*") -> str:
    """Short licence name of the `Files: <files_pattern>` paragraph of the package's copyright."""
    path = Path("/usr/share/doc") / package / "copyright"
    if not path.is_file():
        return "unknown (no /usr/share/doc copyright file)"
    for paragraph in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in paragraph.splitlines() if re.match(r"^[A-Za-z-]+:", line)
        )
        if fields.get("Files", "").split() and files_pattern in fields["Files"].split():
            return fields.get("License", "unknown").strip()
    return "unknown"


def _file_candidate(path: Path, package: str, licence: str, label: str, group: str) -> Candidate:
    return Candidate(str(path), package, licence, label, group, path.read_bytes)


def _opencv() -> Iterator[Candidate]:
    licence = package_licence("opencv-doc", "data/*")
    for path in package_files("opencv-doc"):
        if "/examples/data/" in str(path) and is_image_name(path.name, suffixes=PHOTO_SUFFIXES):
            # Stereo pairs / sequences (aloeL+aloeR, left01..14, graf1+graf3) form one group.
            stem = re.sub(r"(\d+|L|R)$", "", path.stem)
            stem = re.sub(r"^(left|right)", "leftright", stem)
            yield _file_candidate(path, "opencv-doc", licence, "", f"opencv-doc:{stem}")


def _tuxpaint() -> Iterator[Candidate]:
    package = "tuxpaint-stamps-default"
    licence = package_licence(package)
    root = Path("/usr/share/tuxpaint/stamps")
    for path in package_files(package):
        if is_image_name(path.name, suffixes=(".png",)) and root in path.parents:
            label = path.relative_to(root).parts[0]
            group = f"{package}:{path.with_suffix('')}".removesuffix("_mirror")
            yield _file_candidate(path, package, licence, label, group)


def _gcompris() -> Iterator[Candidate]:
    package = "gcompris-qt-data"
    licence = package_licence(package)
    bundles = {p.stem: p for p in package_files(package) if p.suffix == ".rcc"}
    for name, fixed_label in _GCOMPRIS_RCC.items():
        if name not in bundles:
            continue
        for inner, data in sorted(read_rcc(bundles[name]).items()):
            if not is_image_name(inner, suffixes=PHOTO_SUFFIXES):
                continue
            label = Path(inner).parent.name if fixed_label is None else fixed_label
            label = "" if label in _GCOMPRIS_NO_LABEL else label
            key = f"{bundles[name]}:{inner}"
            yield Candidate(key, package, licence, label, key, functools.partial(bytes, data))


def _libjxl() -> Iterator[Candidate]:
    package = "libjxl-testdata"
    licence = package_licence(package)
    for path in package_files(package):
        if is_image_name(path.name, suffixes=PHOTO_SUFFIXES) and "pngsuite" not in str(path):
            # flower.png, flower.png.im_q85_420.jpg, flower_small.q85_...: one photo.
            stem = re.split(r"[._]", path.name)[0]
            yield _file_candidate(path, package, licence, "", f"{package}:{stem}")


def _skimage() -> Iterator[Candidate]:
    try:
        import skimage.data
    except ImportError as error:
        raise MultiGrainError(
            "the built-in benchmark needs scikit-image's bundled photos: "
            "pip install scikit-image (or pip install -e '.[dev]')"
        ) from error
    folder = Path(skimage.data.__file__).parent
    for name in _SKIMAGE_PHOTOS:
        path = folder / name
        if path.is_file():
            # keyed by its name inside the package, not by the path of the environment:
            # keys order the pool, and the build must not depend on where Python lives
            yield Candidate(
                f"scikit-image:data/{name}", "scikit-image", "BSD-3-Clause", "",
                f"skimage:{name}", path.read_bytes,
            )  # fmt: skip


SOURCES: dict[str, Callable[[], Iterator[Candidate]]] = {
    "opencv-doc": _opencv,
    "tuxpaint-stamps-default": _tuxpaint,
    "gcompris-qt-data": _gcompris,
    "libjxl-testdata": _libjxl,
    "scikit-image": _skimage,
}


def all_candidates() -> Iterator[Candidate]:
    """Every candidate of every source; raises MultiGrainError naming a missing package first."""
    for package in DEBIAN_PACKAGES:
        package_files(package)  # fail early, before any slow scan
    for source in SOURCES.values():
        yield from source()
