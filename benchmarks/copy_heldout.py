"""Copy detection on photo packages that no model of ours trained on: the shipped model
against pHash, PDQ, the untrained network and (optionally) the demo's model.

The copy set is the corpus's ``test/`` (tiles of the test packages' photos, one Pillow
distortion per query: :mod:`multigrain.data.corpus.distortions`); ``--set validation`` scores
the set the bundle's settings were chosen on instead. Per method: mAP (one true original
per query), µAP, recall at 90 % precision, mAP per distortion family and their mean; the
shipped model is also scored without its test-time options, to show what each adds, and
classifies the held-out photos of its classes (top-1). JSON (with the machine) and a
markdown table:

    .venv/bin/multigrain corpus build data/corpus          # once: ~1 minute
    .venv/bin/python benchmarks/copy_heldout.py --output docs/benchmarks/copy_heldout.json \
        --markdown docs/results/copy-heldout.md [--demo runs/demo]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multigrain.data.corpus.distortions import HeldoutFamily
from multigrain.data.corpus.heldout import CopySet, read_copy_set
from multigrain.data.listing import list_images
from multigrain.evaluation.heldout.scoring import (
    CopyScores,
    QueryOptions,
    model_similarity,
    pdq_similarity,
    phash_similarity,
    precision_recall_at,
    score_similarities,
)
from multigrain.evaluation.heldout.select import fit_bundle_whitening, training_images
from multigrain.inference.bundle import builtin_bundle_path, load_bundle
from multigrain.inference.classify import classify_images
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.search.whitening import Whitening


def row(scores: CopyScores, seconds: float) -> dict[str, Any]:
    return {**asdict(scores), "family_mean": scores.family_mean, "seconds": round(seconds, 1)}


def timed(
    method: str, copies: CopySet, similarity: Any, threshold: float | None = None
) -> dict[str, Any]:
    """Score one method; with ``threshold`` also the precision and recall it gives here."""
    start = time.perf_counter()
    matrix = similarity()
    result = row(score_similarities(method, matrix, copies), time.perf_counter() - start)
    if threshold is not None:
        precision, recall = precision_recall_at(matrix, copies, threshold)
        siblings = sibling_share(matrix, copies, threshold)
        result["bundle_threshold"] = {
            "score": threshold, "precision": precision, "recall": recall,
            "false_links": siblings[0], "false_links_to_a_sibling_tile": siblings[1],
        }  # fmt: skip
        print(
            f"{method}: at the bundle's threshold {threshold:.4f}: precision "
            f"{precision:.3f}, recall {recall:.3f}; {siblings[1]} of the {siblings[0]} false "
            "links join a copy to another tile of its own photo"
        )
    print(f"{method}: mAP {result['map']:.3f}, µAP {result['micro_ap']:.3f}", flush=True)
    return result


def source_photo(original: Path) -> str:
    """The photo an original tile was cut from: its name without the ``_t<k>`` suffix."""
    return re.sub(r"_t\d+$", "", original.stem)


def sibling_share(similarity: Any, copies: CopySet, threshold: float) -> tuple[int, int]:
    """(false links at ``threshold``, those whose original is another tile of the photo the
    query's true original was cut from). The test package cuts each wallpaper into up to 9
    tiles, the validation package into 1-6, so a tile's siblings are its nearest look-alikes."""
    accepted = np.asarray(similarity) >= threshold
    accepted[np.arange(len(copies.truth)), copies.truth] = False
    photos = np.array([source_photo(path) for path in copies.originals])
    same = photos[np.asarray(copies.truth)][:, None] == photos[None, :]
    return int(accepted.sum()), int((accepted & same).sum())


def classes_top1(model: MultiGrain, classes: list[str], root: Path, resolution: int) -> float:
    """Top-1 on ``root/<class>/*.jpg`` (held-out photos of the training classes)."""
    paths = list_images(root)
    predictions = classify_images(
        model, paths, classes=classes, resolution=resolution, top_k=1, precision="auto"
    )
    correct = [p.labels[0] == Path(p.path).parent.name for p in predictions]
    return sum(correct) / max(1, len(correct))


def demo_model(folder: Path) -> tuple[MultiGrain, int, Whitening | None]:
    """The demo's model at its test s and p*, with its whitening."""
    from multigrain.models.weights import load_model

    report = json.loads((folder / "report.json").read_text())
    extra = report.get("extra", report)
    resolution = int(extra.get("test_resolution", 224))
    model = load_model(folder / "train" / "checkpoint.pt").model.eval()
    model.pool.set_p(float(extra.get("exponent", 3.0)))
    whitening_path = folder / "whitening.pt"
    return model, resolution, Whitening.load(whitening_path) if whitening_path.is_file() else None


def markdown(report: dict[str, Any]) -> str:
    families = [family.value for family in HeldoutFamily]
    head = (
        "| method | mAP | µAP | recall @ 90 % precision | precision / recall at the bundle's "
        "threshold | mean of families | " + " | ".join(families)
    )
    lines = [head + " |", "|---" * (6 + len(families)) + "|"]
    for result in report["methods"]:
        cells = [f"{result['family_map'].get(f, float('nan')):.2f}" for f in families]
        at = result.get("bundle_threshold")
        at_threshold = (
            f"{at['precision']:.3f} / {at['recall']:.3f} ({at['false_links_to_a_sibling_tile']} "
            f"of {at['false_links']} false links to a sibling tile)"
            if at
            else ""
        )
        lines.append(
            f"| {result['method']} | {result['map']:.3f} | {result['micro_ap']:.3f} | "
            f"{result['recall_at_90']:.3f} | {at_threshold} | {result['family_mean']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--set", default="test", choices=["test", "validation"])
    parser.add_argument("--bundle", type=Path, default=None, help="default: the built-in one")
    parser.add_argument("--demo", type=Path, default=None, help="a `multigrain demo` folder")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()

    device = torch.device("cpu")
    copies = read_copy_set(args.corpus / args.set)
    bundle = load_bundle(args.bundle or builtin_bundle_path())
    settings = bundle.settings
    model = bundle.model(device)
    s = settings.resolution
    shipped_options = QueryOptions(flip=settings.query_flip)
    methods = [
        timed("pHash (16x16)", copies, lambda: phash_similarity(copies)),
        timed("PDQ", copies, lambda: pdq_similarity(copies)),
    ]

    torch.manual_seed(0)
    untrained = MultiGrain(**settings.architecture).eval()
    untrained.pool.set_p(settings.exponent)
    control = fit_bundle_whitening(
        untrained, training_images(args.corpus), resolution=s, device=device,
        description="corpus train (control)",
    )  # fmt: skip
    methods.append(
        timed(
            f"untrained {untrained.trunk_name} + whitening, s={s}, p={settings.exponent:g}",
            copies,
            lambda: model_similarity(
                untrained, copies, resolution=s, device=device, whitening=control
            ),
        )  # fmt: skip
    )

    def shipped(whitening: Whitening | None, options: QueryOptions, precision: str = "auto") -> Any:
        return lambda: model_similarity(
            model, copies, resolution=s, device=device, whitening=whitening, options=options,
            precision=precision,
        )  # fmt: skip

    threshold = settings.threshold.score if settings.threshold is not None else None
    methods += [
        timed(
            f"shipped ({bundle.identity}), as shipped: s={s}, p*={settings.exponent:g}, "
            f"whitening {'on' if bundle.whitening else 'off'}, "
            f"flip {'on' if settings.query_flip else 'off'}",
            copies, shipped(bundle.whitening, shipped_options), threshold,
        ),
        timed(
            "shipped, as shipped, int8 (what `--precision auto` runs on CPUs with VNNI and "
            "no AMX)",
            copies, shipped(bundle.whitening, shipped_options, "int8"), threshold,
        ),
        timed("shipped, no whitening, no flip", copies, shipped(None, QueryOptions())),
        timed(
            "shipped + flip" if not settings.query_flip else "shipped without flip",
            copies,
            shipped(bundle.whitening, replace(shipped_options, flip=not settings.query_flip)),
        ),
        timed(
            "shipped + regional query views", copies,
            shipped(bundle.whitening, replace(shipped_options, regions=True)),
        ),
    ]  # fmt: skip
    if args.demo is not None:
        demo, demo_s, demo_whitening = demo_model(args.demo)
        methods.append(
            timed(
                f"demo model ({args.demo}), s={demo_s}, p*={float(demo.pool.p):g}, whitening",
                copies,
                lambda: model_similarity(
                    demo, copies, resolution=demo_s, device=device, whitening=demo_whitening
                ),
            )  # fmt: skip
        )
    top1 = classes_top1(model, list(settings.classes), args.corpus / "classes_heldout", s)
    print(
        f"shipped model, held-out photos of its {len(settings.classes)} classes: top-1 {top1:.3f}"
    )
    report = {
        "benchmark": "copy_heldout",
        "command": " ".join(["benchmarks/copy_heldout.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "set": str(copies.root),
        "originals": len(copies.originals),
        "queries": len(copies.queries),
        "bundle": str(bundle.root),
        "bundle_identity": bundle.identity,
        "methods": methods,
        "classification": {
            "images": str(args.corpus / "classes_heldout"),
            "classes": list(settings.classes),
            "top1": top1,
            "chance": 1 / max(1, len(settings.classes)),
        },
    }
    table = markdown(report)
    print(table)
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    if args.markdown is not None:
        atomic_write_text(args.markdown, table + "\n")


if __name__ == "__main__":
    main()
