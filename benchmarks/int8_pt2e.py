"""Can PyTorch's own int8 path (PT2E + X86InductorQuantizer, VNNI/AMX-int8) run our trunk?

PT2E quantisation left ``torch.ao`` for torchao (``torchao.quantization.pt2e``); this
checks, on the installed torch and torchao, each step for a trunk: export, annotate with
the X86InductorQuantizer's default (static, per-channel weights) configuration, calibrate,
convert, compile with inductor (freezing on), then times the forward against our bf16
eager trunk on the same batch and reports the relative error of the int8 feature maps.
A step that fails is recorded with its error, and the later steps are not run.

torchao is not a dependency of multigrain; install it for this check only:

    .venv/bin/pip install torchao
    .venv/bin/python benchmarks/int8_pt2e.py --output docs/benchmarks/int8_pt2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from multigrain.inference.fast_trunk import fast_trunk_for, fold_batch_norm
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine


def images_per_second(function: Any, batch: torch.Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        function(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(batch)
            times.append(time.perf_counter() - start)
    return len(batch) / sorted(times)[len(times) // 2]


def check(
    trunk_name: str, shape: tuple[int, int, int, int], *, residual_fusion: bool = True
) -> dict[str, Any]:
    """Every step of PT2E int8 on the folded trunk of a seeded `trunk_name` model.

    ``residual_fusion=False`` skips the quantizer's conv + add (+ relu) patterns (the
    residual joins stay in fp32 between a dequantise and a quantise).
    """
    torch.manual_seed(0)
    model = MultiGrain(trunk=trunk_name, num_classes=1000).eval()
    batch = torch.randn(*shape)
    row: dict[str, Any] = {
        "trunk": trunk_name, "batch_shape": list(shape), "residual_fusion": residual_fusion,
        "steps": {},
    }  # fmt: skip
    steps = row["steps"]
    bf16 = fast_trunk_for(model, "bf16", device=torch.device("cpu"))
    row["bf16_eager_images_per_second"] = round(images_per_second(bf16, batch), 2)
    try:
        import torchao
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        steps["import torchao"] = f"failed: {error} (pip install torchao)"
        return row
    row["torchao"] = torchao.__version__
    folded = fold_batch_norm(model.features)
    stage = "export"
    try:
        start = time.perf_counter()
        with torch.no_grad():
            graph = torch.export.export(folded, (batch,)).module()
            steps["export"] = "ok"
            stage = "annotate (prepare_pt2e)"
            quantizer = x86.X86InductorQuantizer()
            if not residual_fusion:
                for name in ("_annotate_conv2d_binary_unary", "_annotate_conv2d_binary"):
                    setattr(quantizer, name, lambda *args, **kwargs: None)
            quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(graph, quantizer)
            steps[stage] = "ok"
            stage = "calibrate + convert"
            for _ in range(2):
                prepared(torch.randn(*shape))
            converted = convert_pt2e(prepared)
            steps[stage] = "ok"
            stage = "compile (inductor, freezing)"
            from torch._inductor import config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(converted)
            compiled(batch)
            steps[stage] = "ok"
        row["quantise_and_compile_seconds"] = round(time.perf_counter() - start, 1)
        row["int8_images_per_second"] = round(images_per_second(compiled, batch), 2)
        with torch.no_grad():
            reference = folded(batch)
            error = (compiled(batch) - reference).norm() / reference.norm()
        row["relative_error_of_feature_maps"] = round(float(error), 4)
    except Exception as error:  # noqa: BLE001 -- the point is to record which step fails
        lines = traceback.format_exception(error)
        steps[stage] = f"failed: {type(error).__name__}: {error}"
        row["failure_traceback_tail"] = "".join(lines[-6:])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trunks", default="resnet50,resnet18")
    parser.add_argument("--shape", default="16,3,168,224", help="batch shape B,C,H,W")
    parser.add_argument(
        "--residual-fusion", choices=("on", "off", "both"), default="both",
        help="annotate the conv + add (+ relu) patterns (on), skip them (off), or try both",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench/int8_pt2e.json"))
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    report = {
        "benchmark": "int8_pt2e",
        "command": "benchmarks/int8_pt2e.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": describe_machine(),
        "torch": torch.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "results": [
            check(name, shape, residual_fusion=fusion)  # type: ignore[arg-type]
            for name in args.trunks.split(",")
            for fusion in {"on": [True], "off": [False], "both": [True, False]}[
                args.residual_fusion
            ]
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
