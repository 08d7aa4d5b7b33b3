"""Quality guard: the built-in benchmark in fp32 and in each fast precision, compared.

Runs ``evaluate_builtin`` (multigrain.evaluation.builtin.score) once per precision on the same model
and reports, for the model ("trained") and for the same architecture untrained:
copy-detection mAP and µAP (all queries), instance mAP and held-out top-1 (when the model
was trained on the built-in classes), and each one's difference from fp32 in points
(1 point = 0.01). A precision that loses more than --threshold points (default 0.5) on
any of the model's metrics is flagged: it must not be a default.

Without --checkpoint the model is an untrained, seeded network (then "trained" and
"untrained" are the same random network: the guard still measures what the precision
does to its descriptors, but not on features that mean anything; the JSON says so).
int8 runs as ``multigrain embed --precision int8`` does: quantised once, calibrated on the
first image set the benchmark embeds, then loaded from the int8 cache for every other set
(multigrain/inference/int8_cache.py). The guard starts from an empty cache of its own, so
no earlier calibration decides its figures. With ``--int8-per-set`` the cache is off and
every image set is embedded by a quantisation of its own, as descriptors made on machines
that share no cache: since int8 calibrates on the same dead-leaves pictures everywhere the
figures must equal the cached run's (before, each set calibrated on its own images; 2026-12-07
figures in the README).

The benchmark is small (about 175 copy queries, 128 instance views, 60 held-out photos),
so one query or one view changing rank moves a metric by about 0.5 point, and one of the
60 held-out photos changing class moves top-1 by 1.7 points: read a flag with that in mind.

    .venv/bin/python benchmarks/quality_guard.py --checkpoint runs/builtin-r18/checkpoint.pt \\
        --resolution 224 --precisions fp32,bf16,int8 --output runs/bench/quality_guard.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from multigrain.evaluation.builtin.result import BuiltinResult, Method
from multigrain.evaluation.builtin.score import evaluate_builtin
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.distributed import resolve_device
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.machine import describe_machine
from multigrain.runtime.precision import resolve_inference_precision

METHODS = (Method.TRAINED, Method.UNTRAINED)


def metrics_of(result: BuiltinResult, method: Method) -> dict[str, float]:
    """The headline numbers of one method, as fractions (not points)."""
    overall = next(
        row
        for row in result.copy_detection
        if row.method == method and row.family == "all" and row.strength == "all"
    )
    values = {
        "copy_map": overall.map,
        "copy_micro_ap": overall.micro_ap,
        "instance_map": result.instances[method].map,
    }
    if method in result.classification:
        values["heldout_top1"] = result.classification[method]
    return values


def compare(
    scores: dict[str, dict[str, dict[str, float]]], threshold: float
) -> dict[str, dict[str, Any]]:
    """Per precision: differences from fp32 in points, and whether the model lost too much."""
    reference = scores["fp32"]
    verdicts = {}
    for precision, per_method in scores.items():
        differences = {
            method: {
                name: round(100 * (value - reference[method][name]), 3)
                for name, value in values.items()
            }
            for method, values in per_method.items()
        }
        worst = min(differences["trained"].values())
        verdicts[precision] = {
            "points_vs_fp32": differences,
            "worst_loss_points": round(-worst, 3) if worst < 0 else 0.0,
            "may_be_default": worst >= -threshold,
        }
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/builtin"))
    parser.add_argument(
        "--checkpoint", type=Path,
        help="a checkpoint file or a bundle folder (src/multigrain/bundles/copy-r18); "
        "default: untrained seeded network",
    )  # fmt: skip
    parser.add_argument("--trunk", default="resnet18", help="for the untrained default")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--threshold", type=float, default=0.5, help="points")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--int8-per-set", action="store_true",
        help="int8 quantised anew for every image set it embeds (queries, references, ...: "
        "the int8 cache off), as on machines that share no cache",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench/quality_guard.json"))
    args = parser.parse_args()
    os.environ["MULTIGRAIN_CACHE_DIR"] = (
        "off" if args.int8_per_set else tempfile.mkdtemp(prefix="quality-guard-int8-")
    )
    device = resolve_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p]
    if precisions[0] != "fp32":
        precisions = ["fp32", *[p for p in precisions if p != "fp32"]]
    classes: list[str] | None = None
    if args.checkpoint is not None and args.checkpoint.is_dir():  # a bundle (the shipped model)
        from multigrain.inference.bundle import load_bundle

        bundle = load_bundle(args.checkpoint)
        model, classes, name = bundle.model(), bundle.settings.classes, bundle.identity
    elif args.checkpoint is not None:
        from multigrain.models.checkpoint import model_identity
        from multigrain.models.weights import load_model

        loaded = load_model(args.checkpoint)
        model, classes, name = loaded.model, loaded.classes, model_identity(args.checkpoint)
    else:
        torch.manual_seed(0)
        model, name = MultiGrain(trunk=args.trunk, num_classes=1000), "untrained (seed 0)"
    model.to(device).eval()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[str, Any] = {}
    for precision in precisions:
        try:
            used = resolve_inference_precision(precision, device)
        except MultiGrainError as error:  # e.g. int8 on a GPU
            runs[precision] = {"skipped": str(error)}
            continue
        start = time.perf_counter()
        result = evaluate_builtin(
            model, args.root, model_name=name, resolution=args.resolution, device=device,
            classes=classes, precision=used,
        )  # fmt: skip
        scores[used.value] = {method.value: metrics_of(result, method) for method in METHODS}
        runs[used.value] = {"seconds": round(time.perf_counter() - start, 1)}
        print(json.dumps({"precision": used.value, **scores[used.value]}), flush=True)
    report = {
        "benchmark": "quality_guard",
        "command": " ".join(["python", *sys.argv]),
        "machine": describe_machine(),
        "model": name,
        "trained_checkpoint": args.checkpoint is not None,
        "resolution": args.resolution,
        "exponent": float(model.pool.p),
        "device": str(device),
        "threshold_points": args.threshold,
        "scores": scores,
        "verdicts": compare(scores, args.threshold),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
