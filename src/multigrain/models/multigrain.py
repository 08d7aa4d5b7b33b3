"""The MultiGrain network (SPEC §2): trunk -> GeM -> embedding -> linear classifier.

The model returns tensors only; sampling, losses, normalisation for retrieval and
whitening live outside it.
"""

from __future__ import annotations

from torch import Tensor, nn

from multigrain.models.pooling import GeM
from multigrain.models.standardise import with_standardised_input
from multigrain.models.trunk import TrunkName, build_trunk, parse_trunk_name
from multigrain.runtime.errors import MultiGrainError


class MultiGrain(nn.Module):
    """Image -> (embedding, logits).

    Children are ``features`` (the trunk), ``pool`` (GeM) and ``classifier``
    (``nn.Linear(embedding_dim, num_classes)``), so state-dict keys match the authors'
    released checkpoints: ``features.layer1.0.conv1.weight``, ``pool.p``,
    ``classifier.weight``, ``classifier.bias``.
    """

    def __init__(
        self,
        *,
        trunk: str | TrunkName = "resnet50",
        num_classes: int = 1000,
        pooling_exponent: float = 3.0,
        learnable_pooling: bool = False,
        small_input: bool = False,
        standardise_input: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise MultiGrainError(f"num_classes must be >= 1, got {num_classes}")
        self.trunk_name: str = parse_trunk_name(trunk).value
        self.num_classes = int(num_classes)
        self.pooling_exponent = float(pooling_exponent)
        self.learnable_pooling = bool(learnable_pooling)
        self.small_input = bool(small_input)
        self.standardise_input = bool(standardise_input)
        self.features, self.embedding_dim = build_trunk(self.trunk_name, small_input=small_input)
        if self.standardise_input:  # models/standardise.py: brightness/contrast/cast-blind
            self.features = with_standardised_input(self.features)
        self.pool = GeM(p=self.pooling_exponent, learnable=self.learnable_pooling)
        self.classifier = nn.Linear(self.embedding_dim, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) images -> (N, C, h, w) last feature map (any H, W)."""
        out: Tensor = self.features(x)
        return out

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features: (N, C, h, w) -> (embedding (N, C) float32, logits (N, num_classes)).

        The embedding is the raw GeM output; the retrieval descriptor is its L2
        normalisation, done by the caller.
        """
        embedding = self.pool(features)
        logits = self.classifier(embedding)
        return embedding, logits

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, 3, H, W) -> (embedding (N, C), logits (N, num_classes))."""
        return self.forward_head(self.forward_features(x))

    def architecture(self) -> dict[str, object]:
        """The constructor keyword arguments, so a checkpoint can rebuild the model."""
        return {
            "trunk": self.trunk_name,
            "num_classes": self.num_classes,
            "pooling_exponent": self.pooling_exponent,
            "learnable_pooling": self.learnable_pooling,
            "small_input": self.small_input,
            "standardise_input": self.standardise_input,
        }
