"""MultiGrain: one image embedding for classes, instances and copies (Berman et al., 2019)."""

from multigrain.errors import MultiGrainError

__version__ = "0.1.0"
__all__ = ["MultiGrainError", "__version__"]
