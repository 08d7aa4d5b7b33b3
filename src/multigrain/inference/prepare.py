"""One way to turn what a user passes (nothing, a bundle, a checkpoint) into a ready model.

- nothing: the built-in bundle shipped with the package;
- a bundle folder (or its bundle.json): its weights, s, p*, whitening and threshold;
- a weights file: the model, s = 500 unless given, p* from a ``calibrate`` file beside it.

Settings the user gives explicitly win; a bundle's whitening is applied only at the s and
p* it was fitted at (elsewhere it is left out, with a note saying so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from multigrain.inference.bundle import Bundle, default_bundle, is_bundle, load_bundle
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision
from multigrain.search.descriptors import EmbeddingMetadata
from multigrain.search.whitening import Whitening

DEFAULT_RESOLUTION = 500  # for a bare checkpoint: the paper's s*
CALIBRATION_SUFFIX = ".calibration.json"


@dataclass
class PreparedModel:
    """A model set up for inference, and the settings that go with it."""

    model: MultiGrain  # eval mode, on the device, p set
    classes: list[str]
    identity: str  # what made a descriptor: "<file>@sha256:<16 hex>"
    resolution: int
    whitening: Whitening | None
    bundle: Bundle | None = None
    notes: list[str] = field(default_factory=list)  # for the CLI to print

    @property
    def source(self) -> str | None:
        """The bundle folder, when the model came from one."""
        return str(self.bundle.root) if self.bundle is not None else None

    @property
    def query_flip(self) -> bool:
        return self.bundle.settings.query_flip if self.bundle is not None else False

    @property
    def threshold(self) -> float | None:
        """The bundle's 90 %-precision score threshold, valid for these settings only."""
        if self.bundle is None or self.bundle.settings.threshold is None:
            return None
        settings, threshold = self.bundle.settings, self.bundle.settings.threshold
        same = (
            self.resolution == settings.resolution
            and abs(float(self.model.pool.p) - settings.exponent) < 1e-6
            and (self.whitening is not None) == threshold.whitened
        )
        return threshold.score if same else None

    def embedding_metadata(self, precision: InferencePrecision) -> EmbeddingMetadata:
        """What descriptors made by this model at `precision` (the one that ran) record."""
        return EmbeddingMetadata(
            model=self.identity,
            resolution=self.resolution,
            exponent=float(self.model.pool.p),
            whitened=self.whitening is not None,
            dim=self.whitening.output_dim if self.whitening else self.model.embedding_dim,
            precision=precision.value,
            bundle=self.source,
            threshold=self.threshold,
            whitening=self.whitening.fingerprint if self.whitening is not None else None,
        )


def calibration_path(checkpoint: Path) -> Path:
    """Where `calibrate` stores p* for a checkpoint, and where embed/classify look for it."""
    return checkpoint.with_name(checkpoint.name + CALIBRATION_SUFFIX)


def load_whitening(path: Path, model: MultiGrain) -> Whitening:
    """A whitening file for ``model``; MultiGrainError if its input dimension differs."""
    whitening = Whitening.load(path)
    if whitening.input_dim != model.embedding_dim:
        raise MultiGrainError(
            f"whitening {path} expects {whitening.input_dim}-d embeddings but the model gives "
            f"{model.embedding_dim}-d: fit it with the same model (multigrain whiten)"
        )
    return whitening


def prepare_model(
    source: Path | None,
    *,
    resolution: int | None = None,
    exponent: float | None = None,
    whitening: Path | None = None,
    use_bundle_whitening: bool = True,
    device: torch.device | str = "cpu",
) -> PreparedModel:
    """Load ``source`` (None: the built-in bundle) and set s, p* and the whitening.

    Raises MultiGrainError naming the fix when the source is missing or unreadable.
    """
    if source is not None and source.is_dir() and not is_bundle(source):
        raise MultiGrainError(
            f"{source} is a folder but not a model bundle (no bundle.json in it): pass a "
            "bundle folder, a weights file, or nothing for the built-in model"
        )
    if source is None or is_bundle(source):
        bundle = default_bundle() if source is None else load_bundle(source)
        prepared = _from_bundle(bundle, resolution, exponent, use_bundle_whitening, device)
    else:
        prepared = _from_checkpoint(source, resolution, exponent, device)
    if whitening is not None:
        prepared.whitening = load_whitening(whitening, prepared.model)
        fitted = prepared.whitening.fitted_on
        fitted_s, fitted_p = fitted.get("resolution"), fitted.get("exponent")
        if (
            fitted_s is not None
            and fitted_p is not None
            and (
                int(fitted_s) != prepared.resolution
                or abs(float(fitted_p) - float(prepared.model.pool.p)) > 1e-6
            )
        ):
            raise MultiGrainError(
                f"whitening {whitening} was fitted at s={fitted_s}, p={fitted_p}, but the "
                f"descriptors here are made at s={prepared.resolution}, "
                f"p={float(prepared.model.pool.p):g}: pass --resolution {fitted_s} --exponent "
                f"{fitted_p}, or fit a whitening at these settings with `multigrain whiten`"
            )
    return prepared


def _from_bundle(
    bundle: Bundle,
    resolution: int | None,
    exponent: float | None,
    use_whitening: bool,
    device: torch.device | str,
) -> PreparedModel:
    settings = bundle.settings
    notes = []
    model = bundle.model(device)
    s = settings.resolution if resolution is None else resolution
    if exponent is not None:
        model.pool.set_p(exponent)
    elif s != settings.resolution:
        notes.append(
            f"note: bundle {bundle.root} chose p*={settings.exponent:g} for "
            f"s={settings.resolution}; used at s={s} (pass -p to choose another)"
        )
    whitening = bundle.whitening if use_whitening else None
    p = float(model.pool.p)
    if whitening is not None and (s != settings.resolution or abs(p - settings.exponent) > 1e-6):
        notes.append(
            f"note: the bundle's whitening was fitted at s={settings.resolution}, "
            f"p={settings.exponent:g}; not applied at s={s}, p={p:g}"
        )
        whitening = None
    return PreparedModel(
        model, list(settings.classes), bundle.identity, s, whitening, bundle, notes
    )


def _from_checkpoint(
    checkpoint: Path, resolution: int | None, exponent: float | None, device: torch.device | str
) -> PreparedModel:
    from multigrain.inference.calibrate import CalibrationResult
    from multigrain.models.checkpoint import model_identity
    from multigrain.models.weights import load_model

    loaded = load_model(checkpoint)
    model = loaded.model
    s = DEFAULT_RESOLUTION if resolution is None else resolution
    notes = []
    if exponent is None and calibration_path(checkpoint).exists():
        calibration = CalibrationResult.load(calibration_path(checkpoint))
        exponent = calibration.best.get(s)
        if exponent is None:
            notes.append(
                f"note: {calibration_path(checkpoint)} has no p* for s={s} "
                f"(calibrated: {sorted(calibration.best)}); using the model's p"
            )
    if exponent is not None:
        model.pool.set_p(exponent)
    model.to(device).eval()
    return PreparedModel(
        model, list(loaded.classes), model_identity(checkpoint), s, None, None, notes
    )
