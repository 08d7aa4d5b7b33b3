"""A whitening folded into the classifier: logits from whitened vectors and from the
descriptors users store (SPEC §4; the whitening in :mod:`multigrain.search.whitening`).

One vector for both jobs. The classifier's logits are affine in x: with RAW,
logits = x W^T + b; with UNIT_WITH_ONE, x [W, b]^T = logits / ||[e, 1]|| (the appended 1
carries the bias through the normalisation, so only a positive factor is lost). Folding P
(:func:`fold_into_classifier`: W' = W_x P^-T, b' = b_x + W_x mu) makes them affine in w,
and the constant coordinate c carries b' through the final normalisation:

    descriptor · [W', b' / c]^T = (w W'^T + b') / ||[w, c]||,

a positive multiple of the logits, so :func:`descriptor_classifier` gives the image's
top-k from the unit vector users store (exactly when d is the full input dimension).
Without c, top-1 from the stored vector agreed with the image's on 70-77 % of photos.
c = :data:`CONSTANT_SCALE` x the RMS norm of w on the fitting set: cosines move by ~1e-6.

:func:`fold_into_classifier` reads the un-normalised whitened vector w (what
``classify --whitening`` uses); :func:`descriptor_classifier` reads the stored unit
descriptor.
"""

from __future__ import annotations

import torch
from torch import nn

from multigrain.runtime.errors import MultiGrainError
from multigrain.search.whitening import Whitening, WhiteningInput


def fold_into_classifier(classifier: nn.Linear, whitening: Whitening) -> nn.Linear:
    """A linear classifier on whitened vectors w that reproduces ``classifier`` on raw ones.

    The classifier as a linear map of the PCA's input x: RAW, x = e: W_x = W, b_x = b;
    UNIT_WITH_ONE, x = l2n([e, 1]): W_x = [W, b], b_x = 0, and x W_x^T = logits / ||[e, 1]||.
    With w = (x - mu) P (row vectors) and P invertible (d = dim x), x = w P^-1 + mu, so

        x W_x^T + b_x = w (W_x P^-T)^T + (b_x + W_x mu)
        => W' = W_x P^-T  (K, d),   b' = b_x + W_x mu  (K,)

    and ``folded(w)`` equals the logits (RAW) or the logits / ||[e, 1]||
    (:meth:`Whitening.logit_scale`; same top-k), up to float round-off. With d < dim x,
    P^-1 is the pseudo-inverse and x is replaced by its projection on the kept principal
    subspace, so the result is only an approximation.

    The retrieval descriptor is the unit vector of [w, c]: ``folded(ŵ)`` alone is not
    proportional to the logits (b' is not scaled by the norm): use
    :func:`descriptor_classifier` for stored descriptors.

    Args:
        classifier: (K, D) linear layer on raw embeddings.
        whitening: a fitted :class:`Whitening` with input dimension D.

    Returns:
        A new ``nn.Linear(d, K)`` on the un-normalised w, the constant coordinate aside
        (float32 parameters, on the classifier's device).
    """
    if classifier.in_features != whitening.input_dim:
        raise MultiGrainError(
            f"the classifier takes {classifier.in_features}-d embeddings but the whitening "
            f"was fitted on {whitening.input_dim}-d descriptors: fit it with the same model"
        )
    device = classifier.weight.device
    weight = classifier.weight.detach().double()
    bias = (
        classifier.bias.detach().double()
        if classifier.bias is not None
        else torch.zeros(classifier.out_features, dtype=torch.float64, device=device)
    )
    if whitening.input is WhiteningInput.UNIT:
        raise MultiGrainError(
            "this whitening was fitted on L2-normalised embeddings without the constant 1 "
            "(an older demo's), which drops the classifier's bias, so it cannot be folded "
            "into the classifier: refit it with `multigrain whiten`"
        )
    if whitening.input is WhiteningInput.UNIT_WITH_ONE:  # the bias rides on the input's 1
        weight, bias = torch.cat([weight, bias[:, None]], dim=1), torch.zeros_like(bias)
    projection = whitening.projection.to(device)
    inverse = (
        torch.linalg.inv(projection)
        if projection.shape[0] == projection.shape[1]
        else torch.linalg.pinv(projection)
    )  # (d, dim x)
    folded = nn.Linear(whitening.kept_dim, classifier.out_features, device=device)
    with torch.no_grad():
        folded.weight.copy_(weight @ inverse.T)
        folded.bias.copy_(bias + weight @ whitening.mean.to(device))
    return folded


def descriptor_classifier(classifier: nn.Linear, whitening: Whitening) -> nn.Linear:
    """The classifier on stored descriptors: (N, d + 1) unit vectors -> (N, K) scores.

    ``nn.Linear(d + 1, K, bias=False)`` with weight ``[W', b' / c]`` (module docstring):
    its scores are the raw embedding's logits divided by a positive factor (||[w, c]||,
    times ||[e, 1]|| for UNIT_WITH_ONE), so top-k and argmax agree with ``classifier`` on
    the raw embedding (exactly at full d; through the pseudo-inverse below). Softmax of
    these scores is not the model's probability.
    """
    if whitening.constant <= 0:
        raise MultiGrainError(
            "this whitening appends no constant coordinate (fitted by an older multigrain), so "
            "its unit descriptors cannot be classified: refit it with `multigrain whiten`, or "
            "classify the images with `multigrain classify --whitening`"
        )
    folded = fold_into_classifier(classifier, whitening)
    scores = nn.Linear(whitening.output_dim, classifier.out_features, bias=False)
    scores = scores.to(classifier.weight.device)
    with torch.no_grad():
        weight = torch.cat(
            [folded.weight.double(), folded.bias.double()[:, None] / whitening.constant], dim=1
        )
        scores.weight.copy_(weight)
    return scores
