"""What made a set of descriptors: the metadata an `embed` output and an index both carry.

An `embed` output stores it as ``metadata.json``, each shard as a JSON string, an index in
its ``meta.sqlite`` (``info.metadata``). The JSON is ``json.dumps(metadata.as_dict(),
sort_keys=True)``, so the same settings always give the same text.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from multigrain.runtime.errors import MultiGrainError

FORMAT_VERSION = 1

#: Fields compared only when both sides record them: the whitening's fingerprint, and the
#: int8 trunk's (two int8 quantisations of one model are two models: their descriptors of
#: one image differ by more than round-off, see multigrain.inference.int8_cache).
FINGERPRINTS = ("whitening", "int8")


@dataclass(frozen=True)
class EmbeddingMetadata:
    """The settings a descriptor was computed with; two sets compare only if these agree."""

    model: str  # identity of the weights: file name and content hash ("" when unknown)
    resolution: int  # s: longest image side
    exponent: float  # p*: GeM exponent used
    whitened: bool
    dim: int
    precision: str
    format_version: int = FORMAT_VERSION
    bundle: str | None = None  # the model bundle folder the settings came from, if any
    threshold: float | None = None  # the bundle's 90 %-precision score at these settings
    whitening: str | None = None  # Whitening.fingerprint of the whitening applied, if any
    int8: str | None = None  # int8 only: fingerprint of the quantised trunk that ran

    def matches(self, other: EmbeddingMetadata) -> bool:
        """Every field equal, a fingerprint (:data:`FINGERPRINTS`) missing on either side
        aside: descriptors that may share one output or index. A missing fingerprint is an
        output written before fingerprints, or one not yet known (an int8 trunk's is known
        once it is quantised or loaded from the cache)."""
        unknown: dict[str, Any] = {
            key: None
            for key in FINGERPRINTS
            if getattr(self, key) is None or getattr(other, key) is None
        }
        return replace(self, **unknown) == replace(other, **unknown)

    def as_dict(self) -> dict[str, Any]:
        """The fields, ``int8`` left out for float descriptors: their records read as
        before it existed (and by a multigrain that predates it)."""
        values = asdict(self)
        if values["int8"] is None:
            del values["int8"]
        return values

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmbeddingMetadata:
        values = json.loads(text)
        if values.get("format_version", 0) > FORMAT_VERSION:
            raise MultiGrainError(
                f"embeddings written by a newer multigrain (format {values['format_version']})"
                ": upgrade multigrain"
            )
        return cls(**values)


def index_metadata_from_json(text: str, *, source: str) -> EmbeddingMetadata | None:
    """An index's stored metadata: ``{}`` (an index built without any) -> None.

    Raises MultiGrainError naming `source` when the JSON is not a complete metadata record.
    """
    values = json.loads(text)
    if values == {}:
        return None
    names = {field.name for field in fields(EmbeddingMetadata)}
    required = {
        field.name
        for field in fields(EmbeddingMetadata)
        if field.default is MISSING and field.default_factory is MISSING
    }
    unknown, missing = sorted(set(values) - names), sorted(required - set(values))
    if unknown or missing:
        raise MultiGrainError(
            f"{source} holds metadata {values} that does not describe an embedding "
            f"(unknown {unknown}, missing {missing}): rebuild it with `multigrain index build`"
        )
    return EmbeddingMetadata.from_json(text)


#: The settings two sets of descriptors must share to be compared (precision aside: bf16
#: and fp32 descriptors of one model differ by round-off only).
SETTINGS_KEYS = ("model", "resolution", "exponent", "whitened", "dim")


def setting_differences(found: EmbeddingMetadata, expected: EmbeddingMetadata) -> list[str]:
    """``"key: found vs expected"`` for each of :data:`SETTINGS_KEYS` that differs, and for
    each of :data:`FINGERPRINTS` both record (older outputs record no whitening's, float
    descriptors no int8 trunk's: fp32 queries may search int8 descriptors). A model
    identity left unknown (``""``) on either side is not compared."""
    keys: tuple[str, ...] = SETTINGS_KEYS
    if not found.model or not expected.model:
        keys = tuple(key for key in keys if key != "model")
    keys += tuple(
        key
        for key in FINGERPRINTS
        if getattr(found, key) is not None and getattr(expected, key) is not None
    )
    return [
        f"{key}: {getattr(found, key)!r} vs {getattr(expected, key)!r}"
        for key in keys
        if getattr(found, key) != getattr(expected, key)
    ]


def check_compatible(found: EmbeddingMetadata, expected: EmbeddingMetadata, *, what: str) -> None:
    """Refuse to compare descriptors made with other settings, naming each difference.

    Raises:
        MultiGrainError: `what` (e.g. "index photos.index") was made otherwise.
    """
    differences = setting_differences(found, expected)
    if differences:
        fix = "rebuild it with this model, or load the model it was built with"
        if all(difference.startswith("int8:") for difference in differences):
            fix = INT8_FIX  # the settings compared agree: another quantisation only
        raise MultiGrainError(
            f"{what} was made with other settings than this model's ({'; '.join(differences)}):"
            f" {fix}"
        )


def only_int8_differs(first: EmbeddingMetadata, second: EmbeddingMetadata) -> bool:
    """Whether two records differ in their int8 trunk's fingerprint and nothing else."""
    if first.int8 is None or second.int8 is None or first.int8 == second.int8:
        return False
    return replace(first, int8=None) == replace(second, int8=None)


#: What to do when two int8 quantisations of one model meet.
INT8_FIX = (
    "its int8 descriptors come from another quantisation of the model (made by another "
    "version of multigrain, torch or onnxruntime, or calibrated otherwise): run where it was "
    "embedded, whose int8 cache holds that quantisation, or use --precision bf16/fp32 (float "
    "descriptors may search int8 ones)"
)
