"""Network definitions: trunks, GeM pooling and the MultiGrain model."""

from multigrain.models.multigrain import MultiGrain
from multigrain.models.pooling import GeM, gem
from multigrain.models.trunk import TrunkName, build_trunk

__all__ = ["GeM", "MultiGrain", "TrunkName", "build_trunk", "gem"]
