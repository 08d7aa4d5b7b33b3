"""`classify --whitening`: the classifier reading whitened embeddings, whitening folded in.

Its own module, imported by the `classify` command when it runs: it needs torch at import,
and `multigrain --help` must not load torch (start-up time).
"""

from __future__ import annotations

import torch

from multigrain.search.classifier_fold import fold_into_classifier
from multigrain.search.whitening import Whitening


class WhitenedClassifier(torch.nn.Module):
    """The classifier with the whitening folded in: raw embedding -> whitened -> logits."""

    def __init__(self, classifier: torch.nn.Linear, whitening: Whitening) -> None:
        super().__init__()
        self.whitening = whitening
        self.folded = fold_into_classifier(classifier, whitening)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        whitened = self.whitening.transform_unnormalised(embedding.double()).float()
        scale = self.whitening.logit_scale(embedding.double()).float()  # 1 for RAW
        return self.folded(whitened) * scale
