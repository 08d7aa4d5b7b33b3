"""One vector for both jobs: classification from the stored whitened unit descriptor, and
which input the whitening is fitted on (issue 18).

On the shipped model and its corpus (``multigrain corpus build data/corpus``):

* for each kept dimension d: top-1 of the classifier on the raw embedding, and top-1 from
  the descriptor ``embed`` stores (unit length, whitened, the constant coordinate
  appended; :func:`multigrain.search.whitening.descriptor_classifier`), with their
  agreement, on the held-out photos of the classes and on the labelled training photos;
  and, as the failure this fixes, the folded classifier on the unit vector without the
  constant;
* retrieval (copy mAP, µAP on the validation copy set) with the whitening fitted on raw
  embeddings (``whiten`` and ``bundle``) against fitted on L2-normalised ones (the authors'
  script; then applied to normalised embeddings), at the bundle's d, shrinkage and s, p*.

    .venv/bin/python benchmarks/whitened_classification.py \\
        --output docs/benchmarks/whitened_classification.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multigrain.data.corpus.heldout import read_copy_set
from multigrain.data.listing import list_images
from multigrain.evaluation.heldout.scoring import score_similarities
from multigrain.evaluation.heldout.select import training_images
from multigrain.inference.bundle import builtin_bundle_path, load_bundle
from multigrain.inference.embed import embed_in_memory
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.search.whitening import descriptor_classifier, fit_whitening, fold_into_classifier


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
        whitening = fit_whitening(fit, dim=dim, shrinkage=shrinkage)
        scores_of = descriptor_classifier(classifier, whitening)
        folded = fold_into_classifier(classifier, whitening)
        row: dict[str, Any] = {"dim": dim, "descriptor_dim": whitening.output_dim}
        for name, (embeddings, labels) in sets.items():
            with torch.no_grad():
                raw = classifier(embeddings).argmax(dim=1)
                stored = scores_of(whitening.apply(embeddings)).argmax(dim=1)
                w = whitening.transform_unnormalised(embeddings.double()).float()
                naive = folded(nn.functional.normalize(w, dim=1)).argmax(dim=1)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--bundle", type=Path, default=None, help="[default: the built-in one]")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    bundle = load_bundle(args.bundle or builtin_bundle_path())
    model, settings = bundle.model().eval(), bundle.settings
    s, classes = settings.resolution, list(settings.classes)
    shipped_dim = bundle.whitening.kept_dim if bundle.whitening else 256
    shrinkage = float(bundle.whitening.fitted_on.get("shrinkage", 0.1)) if bundle.whitening else 0.1

    def labelled(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
        paths = [p for p in list_images(root) if p.parent.name in classes]
        labels = torch.tensor([classes.index(p.parent.name) for p in paths])
        return raw_embeddings(model, paths, s), labels

    fit = raw_embeddings(model, training_images(args.corpus), s)
    sets = {
        "classes_heldout": labelled(args.corpus / "classes_heldout"),
        "train_labelled": labelled(args.corpus / "train"),
    }
    dims = sorted({d for d in (8, 16, 32, 64, 128, 256, fit.shape[1]) if d < len(fit)})
    table = top1_table(model.classifier, fit, sets, dims, shrinkage)

    copies = read_copy_set(args.corpus / "validation")
    originals = raw_embeddings(model, copies.originals, s)
    queries = raw_embeddings(model, copies.queries, s)
    retrieval = {}
    variants = (("fitted on raw embeddings", False), ("fitted on L2-normalised", True))
    for name, normalise_first in variants:

        def prepare(x: torch.Tensor, first: bool = normalise_first) -> torch.Tensor:
            return nn.functional.normalize(x, dim=1) if first else x

        whitening = fit_whitening(prepare(fit), dim=shipped_dim, shrinkage=shrinkage)
        matrix = (whitening.apply(prepare(queries)) @ whitening.apply(prepare(originals)).T).numpy()
        scores = score_similarities(name, np.asarray(matrix), copies)
        retrieval[name] = {"map": scores.map, "micro_ap": scores.micro_ap}
        print(name, retrieval[name], flush=True)
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
