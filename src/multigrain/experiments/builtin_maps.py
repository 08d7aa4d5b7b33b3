"""The built-in benchmark as cached trunk feature maps: copy mAP and top-1 at any p.

The trunk (the fast one of the forward path, inference.feature_maps) runs once per image
and resolution on the copy queries, their references and the held-out labelled photos;
every GeM exponent p then only re-pools the cached maps (RQ4, the whitening check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data.datasets import ImageFolderImages
from multigrain.data.images import load_rgb
from multigrain.data.listing import list_images
from multigrain.data.standard import read_disc21
from multigrain.experiments.demo_settings import DemoSettings
from multigrain.inference.embed import embed_in_memory
from multigrain.inference.feature_maps import FeatureMaps, extract_feature_maps
from multigrain.metrics import rank_of_match, single_positive_map, top_k_accuracy
from multigrain.models import MultiGrain
from multigrain.search.classifier_fold import fold_into_classifier
from multigrain.search.whitening import fit_whitening


@dataclass(frozen=True)
class WhiteningCheck:
    """Copy mAP without/with whitening; top-1 before/after folding it into the classifier."""

    copy_map: float
    copy_map_whitened: float
    top1: float
    top1_folded: float  # must equal top1: folding is exact


class PathImages:
    """Image files as a LabelledImages (label 0), for feature-map extraction."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.labels = [0] * len(self.paths)
        self.classes = ["-"]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return load_rgb(self.paths[index])


@dataclass
class BuiltinMaps:
    """Trunk feature maps of the copy queries, references and held-out labelled photos.

    ``truth[q]``: the reference query q was made from.
    """

    queries: FeatureMaps
    references: FeatureMaps
    heldout: FeatureMaps
    truth: torch.Tensor

    @staticmethod
    def extract(model: MultiGrain, data_root: Path, resolution: int) -> BuiltinMaps:
        """The maps of the benchmark at ``data_root`` at longest side ``resolution`` (fp32)."""
        copies = read_disc21(data_root / "copydetection")
        truth = dict(copies.ground_truth)
        return BuiltinMaps(
            queries=extract_feature_maps(model, PathImages(copies.queries), resolution=resolution),
            references=extract_feature_maps(
                model, PathImages(copies.references), resolution=resolution
            ),
            heldout=extract_feature_maps(
                model, ImageFolderImages(data_root / "heldout_classes"), resolution=resolution
            ),
            truth=torch.tensor([truth[q] for q in range(len(copies.queries))]),
        )

    def copy_map(self, p: float) -> float:
        """Copy mAP of the L2-normalised GeM descriptors with exponent p."""
        with torch.no_grad():
            queries = F.normalize(self.queries.embeddings(p), dim=1)
            references = F.normalize(self.references.embeddings(p), dim=1)
            return single_positive_map(rank_of_match(queries @ references.T, self.truth))

    def scores(self, model: MultiGrain, p: float) -> tuple[float, float]:
        """(held-out top-1, copy mAP) with GeM exponent p."""
        with torch.no_grad():
            logits = self.heldout.logits(model.classifier, p)
            top1 = top_k_accuracy(logits, self.heldout.labels, 1)
        return top1, self.copy_map(p)


def whitening_check(
    model: MultiGrain, data_root: Path, settings: DemoSettings, maps: BuiltinMaps
) -> WhiteningCheck:
    """Copy mAP without/with whitening (fitted on the training photos); top-1 before/after
    folding the whitening into the classifier (must not change).

    ``maps``: the model's feature maps at ``settings.test_resolution``.
    """
    s, p = settings.test_resolution, float(model.pool.p)
    training = list_images(data_root / "train")
    cpu = torch.device("cpu")
    raw_fit, _, _ = embed_in_memory(model, training, resolution=s, device=cpu, normalise=False)
    fit_on = F.normalize(raw_fit, dim=1)
    dim = min(settings.whitening_dim, len(fit_on) - 1)
    whitening = fit_whitening(fit_on, dim=dim, shrinkage=settings.whitening_shrinkage)
    # folding acts on raw embeddings: a second whitening fitted on them, as many
    # components as the fit set allows (the fold is exact only when d = D)
    raw_whitening = fit_whitening(raw_fit, dim=min(raw_fit.shape[1], len(raw_fit) - 1))
    top1, plain_map = maps.scores(model, p)
    with torch.no_grad():
        queries = whitening.apply(F.normalize(maps.queries.embeddings(p), dim=1))
        references = whitening.apply(F.normalize(maps.references.embeddings(p), dim=1))
        whitened_map = single_positive_map(rank_of_match(queries @ references.T, maps.truth))
        folded = fold_into_classifier(model.classifier, raw_whitening)
        raw = maps.heldout.embeddings(p)
        logits = folded(raw_whitening.transform_unnormalised(raw))
        folded_top1 = top_k_accuracy(logits, maps.heldout.labels, 1)
    return WhiteningCheck(
        copy_map=plain_map, copy_map_whitened=whitened_map, top1=top1, top1_folded=folded_top1
    )
