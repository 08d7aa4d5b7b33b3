"""MultiGrain: one image embedding for classes, instances and copies (Berman et al., 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multigrain.runtime.errors import MultiGrainError

if TYPE_CHECKING:
    from multigrain.api import Index, Model
    from multigrain.duplicates.folder import DuplicateReport

__version__ = "0.1.0"
__all__ = ["Index", "MultiGrainError", "__version__", "find_duplicates", "load"]


def load(source: Any = None, **settings: Any) -> Model:
    """The built-in model (or a bundle / weights file): see :func:`multigrain.api.load`.

    Imported on call, so that ``import multigrain`` stays free of torch.
    """
    from multigrain.api import load as load_model

    return load_model(source, **settings)


def find_duplicates(folder: Any, **settings: Any) -> DuplicateReport:
    """Duplicate groups of a folder of photos: see :func:`multigrain.api.find_duplicates`."""
    from multigrain.api import find_duplicates as find

    return find(folder, **settings)


def __getattr__(name: str) -> Any:
    # `multigrain.Index` is imported on first use, for the same reason as `load`.
    if name == "Index":
        from multigrain.api import Index

        return Index
    raise AttributeError(f"module 'multigrain' has no attribute {name!r}")
