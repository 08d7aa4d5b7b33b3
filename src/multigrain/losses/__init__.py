"""Training objectives: distance-weighted sampling, margin loss and the joint loss."""

from multigrain.losses.joint import JointLoss, JointLossOutput
from multigrain.losses.margin import MarginLoss, MarginLossOutput, margin_loss
from multigrain.losses.sampling import (
    Triplets,
    distance_weighted_sampling,
    log_inverse_sphere_density,
    negative_sampling_weights,
)

__all__ = [
    "JointLoss",
    "JointLossOutput",
    "MarginLoss",
    "MarginLossOutput",
    "Triplets",
    "distance_weighted_sampling",
    "log_inverse_sphere_density",
    "margin_loss",
    "negative_sampling_weights",
]
