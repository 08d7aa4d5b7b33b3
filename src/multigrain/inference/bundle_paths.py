"""Where bundles are, without opening one: free of torch, so `multigrain info` needs no more.

:mod:`multigrain.inference.bundle` reads and writes bundles, and re-exports these names.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: The file naming a folder as a bundle (settings, provenance, sha256 of the weights).
MANIFEST_NAME = "bundle.json"
#: Name of the bundle shipped in the package (``multigrain/bundles/<name>``).
BUILTIN_BUNDLE = "copy-r18"


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True for a bundle folder or its bundle.json."""
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (path.name == MANIFEST_NAME and path.is_file())


def builtin_bundle_path() -> Path:
    """Folder of the bundle shipped with the package (it may be absent in a source tree)."""
    return Path(str(resources.files("multigrain") / "bundles" / BUILTIN_BUNDLE))
