"""MultiGrain: one image embedding for classes, instances and copies (Berman et al., 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multigrain.runtime.errors import MultiGrainError

if TYPE_CHECKING:
    from multigrain.api import Model

__version__ = "0.1.0"
__all__ = ["MultiGrainError", "__version__", "load"]


def load(source: Any = None, **settings: Any) -> Model:
    """The built-in model (or a bundle / weights file): see :func:`multigrain.api.load`.

    Imported on call, so that ``import multigrain`` stays free of torch.
    """
    from multigrain.api import load as load_model

    return load_model(source, **settings)
