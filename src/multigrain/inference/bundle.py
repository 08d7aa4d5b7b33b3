"""Model bundles: one folder holding a model and the settings it was calibrated with.

A bundle is what a user passes instead of a bare checkpoint: ``-c BUNDLE`` gives the
command the weights, the class names, the test resolution s and exponent p* chosen for
them, the whitening fitted at that s and p*, and the score threshold that reached 90 %
precision on held-out copies (with the recall it reached there). Layout::

    bundle.json            settings, provenance and the sha256 of the two files below
    model.safetensors      the MultiGrain state dict (float16 on disk, float32 in memory)
    whitening.safetensors  mean, projection, eigenvalues (float64); optional

No pickle anywhere: safetensors holds tensors only, the rest is JSON. The built-in bundle
(:data:`BUILTIN_BUNDLE`) ships inside the package; :func:`default_bundle` returns it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from multigrain.inference.bundle_paths import (
    BUILTIN_BUNDLE,
    MANIFEST_NAME,
    builtin_bundle_path,
    is_bundle,
)
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_bytes, atomic_write_text
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.whitening import Whitening, WhiteningInput

BUNDLE_KIND = "multigrain.bundle"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
WHITENING_NAME = "whitening.safetensors"


@dataclass(frozen=True)
class ScoreThreshold:
    """A similarity threshold and what it reached on the set it was measured on."""

    score: float
    precision: float  # the target: at least this fraction of accepted pairs were copies
    recall: float  # fraction of the true copies accepted at that score
    measured_on: str  # which images, which distortions
    whitened: bool  # measured on whitened descriptors (as the bundle embeds by default)


@dataclass(frozen=True)
class BundleSettings:
    """What ``bundle.json`` says besides provenance."""

    resolution: int  # longest side s
    exponent: float  # GeM p* at s
    classes: list[str]
    architecture: dict[str, Any]
    threshold: ScoreThreshold | None = None
    query_flip: bool = False  # search also with the mirrored query (max score)
    notes: dict[str, Any] = field(default_factory=dict)  # training command, data, figures


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk."""

    root: Path
    settings: BundleSettings
    whitening: Whitening | None
    identity: str  # "<name>@sha256:<16 hex digits of model.safetensors>"

    def model(self, device: torch.device | str = "cpu") -> MultiGrain:
        """The model in eval mode on ``device``, float32, with p = the bundle's p*."""
        try:
            # on the meta device: no memory, no random initialisation (a fifth of a second
            # of embed's start-up for ResNet-18); every tensor comes from the file below
            with torch.device("meta"):
                model = MultiGrain(**self.settings.architecture)
        except TypeError as error:
            raise MultiGrainError(
                f"bundle {self.root} records an architecture this multigrain cannot build "
                f"({error}): upgrade multigrain"
            ) from error
        state = load_file(str(self.root / WEIGHTS_NAME))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise MultiGrainError(
                f"bundle {self.root}: weights do not match its architecture (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}): rewrite it with `multigrain bundle`"
            )
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
        model.pool.set_p(self.settings.exponent)
        return model.to(device).eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    folder: str | os.PathLike[str],
    model: MultiGrain,
    settings: BundleSettings,
    *,
    whitening: Whitening | None = None,
) -> Path:
    """Write ``folder`` (created; existing bundle files replaced atomically) -> its path.

    The weights are stored as float16 (half the size; descriptors move by < 1e-3 cosine):
    measure thresholds on the bundle as :func:`load_bundle` reads it, not on ``model``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        key: value.detach().cpu().to(torch.float16 if value.is_floating_point() else value.dtype)
        for key, value in model.state_dict().items()
    }
    # the architecture travels in the weights file too, so the model's identity (the hash
    # of this file) changes with it: descriptors of one architecture never pass for another's
    architecture = json.dumps(model.architecture(), sort_keys=True)
    atomic_write_bytes(
        folder / WEIGHTS_NAME, safetensors_save(state, metadata={"architecture": architecture})
    )
    files = {WEIGHTS_NAME: _sha256(folder / WEIGHTS_NAME)}
    if whitening is not None:
        tensors = {
            "mean": whitening.mean.double().contiguous(),
            "projection": whitening.projection.double().contiguous(),
            "eigenvalues": whitening.eigenvalues.double().contiguous(),
        }
        metadata = {"fitted_on": json.dumps(whitening.fitted_on, default=str)}
        if whitening.constant > 0:  # descriptors are d + 1 long and classify
            metadata["constant"] = repr(float(whitening.constant))
        metadata["input"] = whitening.input.value
        atomic_write_bytes(folder / WHITENING_NAME, safetensors_save(tensors, metadata=metadata))
        files[WHITENING_NAME] = _sha256(folder / WHITENING_NAME)
    else:
        (folder / WHITENING_NAME).unlink(missing_ok=True)
    manifest = {
        "kind": BUNDLE_KIND,
        "format_version": FORMAT_VERSION,
        "settings": dataclasses.asdict(settings),
        "files": files,
    }
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return folder


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read a bundle folder (or its bundle.json); MultiGrainError naming the fix if broken.

    ``verify`` checks the sha256 of every file against bundle.json.
    """
    root = Path(path)
    if root.name == MANIFEST_NAME:
        root = root.parent
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise MultiGrainError(
            f"{root} is not a model bundle ({MANIFEST_NAME} is missing): write one with "
            "`multigrain bundle`, or pass a checkpoint file"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MultiGrainError(
            f"{manifest_path} is not valid JSON ({error}): rewrite the bundle"
        ) from error
    if manifest.get("kind") != BUNDLE_KIND:
        raise MultiGrainError(f"{manifest_path} is not a multigrain bundle manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise MultiGrainError(
            f"bundle {root} has format version {manifest['format_version']}, newer than this "
            f"multigrain ({FORMAT_VERSION}): upgrade multigrain"
        )
    files: dict[str, str] = manifest.get("files", {})
    for name, digest in files.items():
        file = root / name
        if not file.is_file():
            raise MultiGrainError(f"bundle {root}: {name} is missing; copy the whole folder")
        if verify and _sha256(file) != digest:
            raise MultiGrainError(
                f"bundle {root}: {name} does not match the sha256 in {MANIFEST_NAME} (damaged or "
                "edited): copy the bundle again"
            )
    raw = dict(manifest["settings"])
    threshold = raw.pop("threshold", None)
    settings = BundleSettings(**raw, threshold=ScoreThreshold(**threshold) if threshold else None)
    whitening = None
    if WHITENING_NAME in files:
        tensors = load_file(str(root / WHITENING_NAME))
        with safe_open(str(root / WHITENING_NAME), framework="pt") as handle:
            header = handle.metadata() or {}
        fitted_on = json.loads(header.get("fitted_on", "{}"))
        whitening = Whitening(
            tensors["mean"], tensors["projection"], tensors["eigenvalues"], fitted_on,
            constant=float(header.get("constant", 0.0)),
            input=WhiteningInput(header.get("input", WhiteningInput.RAW.value)),
        )  # fmt: skip
    identity = f"{root.name}@sha256:{files.get(WEIGHTS_NAME, '')[:16]}"
    return Bundle(root, settings, whitening, identity)


def default_bundle() -> Bundle:
    """The shipped bundle; MultiGrainError saying what to pass if this install lacks it."""
    path = builtin_bundle_path()
    if not is_bundle(path):
        raise MultiGrainError(
            f"this multigrain install has no built-in model ({path} is missing): pass "
            "-c CHECKPOINT_OR_BUNDLE, or reinstall multigrain"
        )
    return load_bundle(path)


__all__ = [
    "BUILTIN_BUNDLE",
    "MANIFEST_NAME",
    "Bundle",
    "BundleSettings",
    "ScoreThreshold",
    "builtin_bundle_path",
    "default_bundle",
    "is_bundle",
    "load_bundle",
    "write_bundle",
]
