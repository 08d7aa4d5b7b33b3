"""A model against the shipped one on the held-out photo packages (used by the demo)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from multigrain.data.corpus.build import TEST_PACKAGES, VALIDATION_PACKAGES, build_corpus
from multigrain.data.corpus.heldout import read_copy_set
from multigrain.evaluation.heldout.scoring import (
    CopyScores,
    QueryOptions,
    model_similarity,
    pdq_similarity,
    phash_similarity,
    score_similarities,
)
from multigrain.inference.bundle import builtin_bundle_path, is_bundle, load_bundle
from multigrain.models import MultiGrain
from multigrain.search.whitening import Whitening

logger = logging.getLogger(__name__)

DEFAULT_HELDOUT = Path("data/heldout")


def ensure_heldout(root: Path = DEFAULT_HELDOUT) -> Path:
    """The test copy set of the held-out packages under ``root`` (built once, ~20 s)."""
    if not (root / "test" / "queries.csv").is_file():
        build_corpus(
            root, sources=[*VALIDATION_PACKAGES, *TEST_PACKAGES], overwrite=True, progress=False
        )
    return root / "test"


def compare_with_shipped(
    model: MultiGrain,
    *,
    name: str,
    resolution: int,
    whitening: Whitening | None,
    device: torch.device,
    heldout: Path = DEFAULT_HELDOUT,
) -> list[CopyScores]:
    """pHash, PDQ, ``model`` (at its p, s and whitening) and the shipped bundle (if this
    install has one) on the held-out test copies."""
    copies = read_copy_set(ensure_heldout(heldout))
    results = [
        score_similarities("pHash (16x16)", phash_similarity(copies), copies),
        score_similarities("PDQ", pdq_similarity(copies), copies),
        score_similarities(
            name,
            model_similarity(
                model, copies, resolution=resolution, device=device, whitening=whitening
            ),
            copies,
        ),
    ]
    if is_bundle(builtin_bundle_path()):
        bundle = load_bundle(builtin_bundle_path())
        shipped = bundle.model(device)
        similarity = model_similarity(
            shipped, copies, resolution=bundle.settings.resolution, device=device,
            whitening=bundle.whitening, options=QueryOptions(flip=bundle.settings.query_flip),
        )  # fmt: skip
        results.append(score_similarities(f"shipped model ({bundle.identity})", similarity, copies))
    else:
        logger.warning("no shipped bundle in this install: compared with pHash and PDQ only")
    return results


def comparison_markdown(results: list[CopyScores]) -> str:
    families = list(results[0].family_map) if results else []
    lines = [
        "| method | mAP | µAP | mean of families | " + " | ".join(families) + " |",
        "|---" * (4 + len(families)) + "|",
    ]
    for scores in results:
        cells = " | ".join(f"{scores.family_map[f]:.2f}" for f in families)
        lines.append(
            f"| {scores.method} | {scores.map:.3f} | {scores.micro_ap:.3f} | "
            f"{scores.family_mean:.3f} | {cells} |"
        )
    return "\n".join(lines)


def comparison_dicts(results: list[CopyScores]) -> list[dict[str, Any]]:
    return [{**asdict(scores), "family_mean": scores.family_mean} for scores in results]
