"""What made a set of descriptors: the metadata an `embed` output and an index both carry.

An `embed` output stores it as ``metadata.json``, each shard as a JSON string, an index in
its ``meta.sqlite`` (``info.metadata``). The JSON is ``json.dumps(asdict(metadata),
sort_keys=True)``, so the same settings always give the same text.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace

from multigrain.runtime.errors import MultiGrainError

FORMAT_VERSION = 1


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

    def matches(self, other: EmbeddingMetadata) -> bool:
        """Every field equal, a whitening fingerprint missing on either side (outputs
        written before fingerprints) aside: descriptors that may share one output or index."""
        if self.whitening is None or other.whitening is None:
            return replace(self, whitening=None) == replace(other, whitening=None)
        return self == other

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
    the whitening's fingerprint when both record one (older outputs do not). A model
    identity left unknown (``""``) on either side is not compared."""
    keys: tuple[str, ...] = SETTINGS_KEYS
    if not found.model or not expected.model:
        keys = tuple(key for key in keys if key != "model")
    if found.whitening is not None and expected.whitening is not None:
        keys = (*keys, "whitening")
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
        raise MultiGrainError(
            f"{what} was made with other settings than this model's ({'; '.join(differences)}):"
            " rebuild it with this model, or load the model it was built with"
        )
