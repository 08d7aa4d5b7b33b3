"""Copy-detection mAP on the built-in benchmark per test resolution s and GeM exponent p.

For each checkpoint and a seeded untrained network of the same trunk, the trunk runs once
per image and s (feature maps cached) and every p only re-pools: mAP over all copy
queries and over the strong distortions, one line per (model, s). No JSON: a quick look
at where a trained model stands against random-init features.

    .venv/bin/python benchmarks/builtin_copy_grid.py runs/a/checkpoint.pt [more.pt ...] \\
        [--root data/builtin] [--resolutions 128,160,224] [--exponents 1,3,5]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from multigrain.experiments.builtin_maps import BuiltinMaps
from multigrain.metrics import rank_of_match
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=Path("data/builtin"))
    parser.add_argument("--resolutions", default="128,160,224")
    parser.add_argument("--exponents", default="1,3,5")
    args = parser.parse_args()
    resolutions = [int(s) for s in args.resolutions.split(",")]
    exponents = [float(p) for p in args.exponents.split(",")]
    with open(args.root / "copydetection" / "queries.csv", newline="") as handle:
        strong = torch.tensor([row["strength"] == "strong" for row in csv.DictReader(handle)])
    models: dict[str, MultiGrain] = {}
    for checkpoint in args.checkpoints:
        models[str(checkpoint)] = model_from_checkpoint(checkpoint)[0].eval()
    first = next(iter(models.values()))
    torch.manual_seed(0)
    models["untrained"] = MultiGrain(trunk=first.trunk_name, num_classes=first.num_classes).eval()
    for s in resolutions:
        for name, model in models.items():
            maps = BuiltinMaps.extract(model, args.root, s)
            cells = []
            for p in exponents:
                queries = F.normalize(maps.queries.embeddings(p), dim=1)
                references = F.normalize(maps.references.embeddings(p), dim=1)
                inverse = 1 / rank_of_match(queries @ references.T, maps.truth).double()
                cells.append(
                    f"p={p:g} all {inverse.mean():.3f} strong {inverse[strong].mean():.3f}"
                )
            print(f"s={s} {name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
