"""One vector for both jobs: classification from the stored whitened unit descriptor, and
which input the whitening is fitted on (issue 18).

On the shipped model and its corpus (``multigrain corpus build data/corpus``):

* for each kept dimension d: top-1 of the classifier on the raw embedding, and top-1 from
  the descriptor ``embed`` stores with a whitening fitted as the commands fit it (input
  l2n([e, 1]), unit length, the constant coordinate appended;
  :func:`multigrain.search.whitening.descriptor_classifier`), with their
  agreement, on the held-out photos of the classes and on the labelled training photos;
  and, as the failure this fixes, the folded classifier on the unit vector without the
  constant;
* retrieval (copy mAP, µAP on the validation copy set) with the whitening's input raw
  embeddings, L2-normalised ones, or l2n([e, 1]) (the authors', what the commands fit), at
  the bundle's d, shrinkage and s, p*.

    .venv/bin/python benchmarks/whitened_classification.py \\
        --output docs/benchmarks/whitened_classification.json

The same on the built-in benchmark with the demo's model (after ``make demo``): whitening
fitted on the built-in training photos, classes from ``heldout_classes`` and ``train``,
copy detection on ``copydetection`` (mAP over queries with an original, µAP):

    .venv/bin/python benchmarks/whitened_classification.py --demo runs/demo \\
        --builtin data/builtin --output docs/benchmarks/whitened_classification_builtin.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # copy_heldout.demo_model

from multigrain.data.corpus.heldout import read_copy_set
from multigrain.data.datasets import ImageFolderImages
from multigrain.data.listing import list_images
from multigrain.data.standard import read_disc21
from multigrain.evaluation.heldout.scoring import score_similarities
from multigrain.evaluation.heldout.select import training_images
from multigrain.experiments.demo_settings import DemoSettings
from multigrain.inference.bundle import builtin_bundle_path, load_bundle
from multigrain.inference.embed import embed_in_memory
from multigrain.metrics.copy_detection import micro_average_precision
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.search.classifier_fold import descriptor_classifier, fold_into_classifier
from multigrain.search.whitening import WhiteningInput, fit_whitening


def raw_embeddings(model: MultiGrain, paths: list[Path], resolution: int) -> torch.Tensor:
    rows, _, failures = embed_in_memory(
        model, paths, resolution=resolution, device=torch.device("cpu"), normalise=False,
        precision="fp32", progress=True,
    )  # fmt: skip
    if failures:
        raise SystemExit(f"could not read {failures[0].path}: {failures[0].reason}")
    return rows


def top1_table(
    classifier: nn.Linear,
    fit: torch.Tensor,
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    dims: list[int],
    shrinkage: float,
) -> list[dict[str, Any]]:
    rows = []
    for dim in dims:
        # as the commands fit it (whiten, bundle, the demo)
        whitening = fit_whitening(
            fit, dim=dim, shrinkage=shrinkage, input=WhiteningInput.UNIT_WITH_ONE
        )
        scores_of = descriptor_classifier(classifier, whitening)
        folded = fold_into_classifier(classifier, whitening)
        row: dict[str, Any] = {"dim": dim, "descriptor_dim": whitening.output_dim}
        for name, (embeddings, labels) in sets.items():
            with torch.no_grad():
                raw = classifier(embeddings).argmax(dim=1)
                stored = scores_of(whitening.apply(embeddings)).argmax(dim=1)
                w = whitening.transform_unnormalised(embeddings.double()).float()
                naive = folded(nn.functional.normalize(w, dim=1)).argmax(dim=1)  # no constant
            row[name] = {
                "images": len(labels),
                "top1_raw": float((raw == labels).float().mean()),
                "top1_stored": float((stored == labels).float().mean()),
                "agreement_stored_vs_raw": float((stored == raw).float().mean()),
                "top1_unit_vector_without_constant": float((naive == labels).float().mean()),
                "agreement_without_constant": float((naive == raw).float().mean()),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def labelled_set(
    model: MultiGrain, root: Path, classes: list[str], s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    paths = [p for p in list_images(root) if p.parent.name in classes]
    labels = torch.tensor([classes.index(p.parent.name) for p in paths])
    return raw_embeddings(model, paths, s), labels


def unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, dim=1)


#: What the whitening sees of a raw embedding e, by name: e, l2n(e), l2n([e, 1]).
INPUTS = {
    "fitted on raw embeddings": WhiteningInput.RAW,
    "fitted on L2-normalised": WhiteningInput.UNIT,
    "fitted on l2n([e, 1]) (the authors')": WhiteningInput.UNIT_WITH_ONE,
}


def table_dims(fit: torch.Tensor) -> list[int]:
    """Kept dimensions of the top-1 table: those below the fit set's size, and the full one
    D + 1 (above the fit set's rank when it is small; the shrinkage defines it)."""
    return [d for d in (8, 16, 32, 64, 128, 256) if d < len(fit)] + [fit.shape[1] + 1]


def whitened_similarities(
    fit: torch.Tensor, queries: torch.Tensor, references: torch.Tensor, *, dim: int,
    shrinkage: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Raw embeddings -> per whitening input (:data:`INPUTS`), the (Q, R) cosine similarities
    of the whitened queries and references."""
    similarities = {}
    for name, kind in INPUTS.items():
        whitening = fit_whitening(fit, dim=dim, shrinkage=shrinkage, input=kind)
        similarities[name] = (whitening.apply(queries) @ whitening.apply(references).T).numpy()
    return similarities


def builtin_copy_scores(similarity: np.ndarray, pairs: list[tuple[int, int]]) -> dict[str, float]:
    """(Q, R) similarities, (query, reference) truth -> mAP (queries with an original), µAP."""
    positive = np.zeros_like(similarity, dtype=bool)
    for query, reference in pairs:
        positive[query, reference] = True
    rows = np.flatnonzero(positive.any(axis=1))
    true_best = np.where(positive, similarity, -np.inf).max(axis=1)
    ranks = (np.where(positive, -np.inf, similarity) >= true_best[:, None]).sum(axis=1) + 1
    return {
        "map": float((1.0 / ranks[rows]).mean()),
        "micro_ap": micro_average_precision(similarity.ravel(), positive.ravel(), len(pairs)),
    }


def demo_main(args: argparse.Namespace) -> None:
    """The built-in benchmark with the demo's model (see the module docstring)."""
    from copy_heldout import demo_model

    started = time.perf_counter()
    model, s, _ = demo_model(args.demo)
    classes = list(ImageFolderImages(args.builtin / "train").classes)
    shrinkage = DemoSettings().whitening_shrinkage
    fit_paths = training_images(args.builtin)
    fit = raw_embeddings(model, fit_paths, s)
    sets = {
        "heldout_classes": labelled_set(model, args.builtin / "heldout_classes", classes, s),
        "train_labelled": labelled_set(model, args.builtin / "train", classes, s),
    }
    table = top1_table(model.classifier, fit, sets, table_dims(fit), shrinkage)
    copies = read_disc21(args.builtin / "copydetection")
    queries = raw_embeddings(model, copies.queries, s)
    references = raw_embeddings(model, copies.references, s)
    dim = min(DemoSettings().whitening_dim, len(fit) - 1, fit.shape[1])
    similarities = {
        "no whitening": (unit(queries) @ unit(references).T).numpy(),
        **whitened_similarities(fit, queries, references, dim=dim, shrinkage=shrinkage),
    }
    retrieval = {
        name: builtin_copy_scores(matrix, copies.ground_truth)
        for name, matrix in similarities.items()
    }
    print(json.dumps(retrieval), flush=True)
    report = {
        "benchmark": "whitened_classification",
        "command": "benchmarks/whitened_classification.py --demo runs/demo --builtin "
        "data/builtin --output docs/benchmarks/whitened_classification_builtin.json",
        "machine": describe_machine(),
        "model": f"{args.demo}/train/checkpoint.pt",
        "resolution": s,
        "exponent": float(model.pool.p),
        "shrinkage": shrinkage,
        "fit_images": len(fit),
        "classes": classes,
        "top1_per_dim": table,
        "retrieval_copydetection": {"dim": dim, "queries": len(copies.queries), **retrieval},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--bundle", type=Path, default=None, help="[default: the built-in one]")
    parser.add_argument("--demo", type=Path, default=None, help="a demo folder (runs/demo)")
    parser.add_argument("--builtin", type=Path, default=Path("data/builtin"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.demo is not None:
        demo_main(args)
        return
    started = time.perf_counter()
    bundle = load_bundle(args.bundle or builtin_bundle_path())
    model, settings = bundle.model().eval(), bundle.settings
    s, classes = settings.resolution, list(settings.classes)
    shipped_dim = bundle.whitening.kept_dim if bundle.whitening else 256
    shrinkage = float(bundle.whitening.fitted_on.get("shrinkage", 0.1)) if bundle.whitening else 0.1

    fit = raw_embeddings(model, training_images(args.corpus), s)
    sets = {
        "classes_heldout": labelled_set(model, args.corpus / "classes_heldout", classes, s),
        "train_labelled": labelled_set(model, args.corpus / "train", classes, s),
    }
    table = top1_table(model.classifier, fit, sets, table_dims(fit), shrinkage)

    copies = read_copy_set(args.corpus / "validation")
    originals = raw_embeddings(model, copies.originals, s)
    queries = raw_embeddings(model, copies.queries, s)
    retrieval = {}
    similarities = whitened_similarities(
        fit, queries, originals, dim=shipped_dim, shrinkage=shrinkage
    )
    for name, matrix in similarities.items():
        scores = score_similarities(name, matrix, copies)
        retrieval[name] = {"map": scores.map, "micro_ap": scores.micro_ap}
    print(json.dumps(retrieval), flush=True)
    report = {
        "benchmark": "whitened_classification",
        "command": "benchmarks/whitened_classification.py --output "
        "docs/benchmarks/whitened_classification.json",
        "machine": describe_machine(),
        "bundle": bundle.identity,
        "resolution": s,
        "exponent": settings.exponent,
        "shrinkage": shrinkage,
        "fit_images": len(fit),
        "classes": classes,
        "top1_per_dim": table,
        "retrieval_validation": {"dim": shipped_dim, "queries": len(copies.queries), **retrieval},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
