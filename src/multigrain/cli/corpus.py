"""Subcommands for the shipped model: corpus build / curve, bundle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from multigrain.cli.app import app, comma_list, echo
from multigrain.cli.loading import DeviceOption
from multigrain.cli.outputs import file_option, folder_option

corpus_app = typer.Typer(
    no_args_is_help=True,
    help="The photo corpus of the shipped model: packages, held-out copy sets, curves.",
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build(
    output: Annotated[
        Path,
        typer.Argument(
            help="folder to write (empty or new)", callback=folder_option("for the corpus")
        ),
    ] = Path("data/corpus"),
    seed: Annotated[int, typer.Option(min=0, help="seed of the splits")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty folder")] = False,
    heldout_only: Annotated[
        bool,
        typer.Option(help="only the validation and test sets (no training photos; ~20 s)"),
    ] = False,
) -> None:
    """Collect every photo package installed here; split off whole validation/test packages."""
    from multigrain.data.corpus.build import TEST_PACKAGES, VALIDATION_PACKAGES, build_corpus

    sources = [*VALIDATION_PACKAGES, *TEST_PACKAGES] if heldout_only else None
    manifest = build_corpus(output, seed=seed, overwrite=overwrite, sources=sources)
    echo(f"{output}: {manifest.images_per_split} images, {manifest.queries} held-out copies")
    echo(f"photos per package: {manifest.photos_per_package}")


@corpus_app.command("curve")
def corpus_curve(
    train_folder: Annotated[Path, typer.Argument(help="a training --output-dir with snapshots/")],
    corpus: Annotated[Path, typer.Option(help="the corpus folder")] = Path("data/corpus"),
    resolution: Annotated[
        int, typer.Option("--resolution", "-s", min=1, help="longest image side s")
    ] = 224,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", callback=file_option(".png"), help="PNG plot to write"),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Validation copy mAP of every training snapshot (cached in TRAIN_FOLDER/curve.json)."""
    from multigrain.data.corpus.heldout import read_copy_set
    from multigrain.evaluation.heldout.select import training_curve
    from multigrain.evaluation.plots import plot_curve
    from multigrain.runtime.distributed import resolve_device

    validation = read_copy_set(corpus / "validation")
    points = training_curve(
        train_folder, validation, resolution=resolution, device=resolve_device(device),
        cache=train_folder / "curve.json", report=lambda line: echo(f"scored {line}"),
    )  # fmt: skip
    for point in points:
        echo(f"step {point.step:6d}: mAP {point.map:.3f}  µAP {point.micro_ap:.3f}")
    if output is not None and points:
        plot_curve(points, output, title=f"validation copies ({validation.root}), s={resolution}")
        echo(f"plot: {output}")


@app.command("bundle")
def bundle_command(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", "-c", help="a training checkpoint, or a bundle to redo"),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=folder_option("for the bundle"),
            help="bundle folder to write",
        ),
    ],
    corpus: Annotated[
        Path, typer.Option(help="corpus with validation/ (choices) and train/ (whitening)")
    ] = Path("data/corpus"),
    resolutions: Annotated[
        Sequence[int],
        typer.Option(
            parser=comma_list(int, at_least=1),
            metavar="S,...",
            help="test resolutions s to try (each >= 1)",
        ),
    ] = (224, 288),
    exponents: Annotated[
        Sequence[float],
        typer.Option(
            parser=comma_list(float, above=0.0),
            metavar="P,...",
            help="GeM exponents p* to try (each > 0)",
        ),
    ] = (2.0, 3.0, 4.0, 5.0),
    notes: Annotated[
        Path | None, typer.Option(help="JSON file of provenance to store (command, data)")
    ] = None,
    standardise_input: Annotated[
        bool | None,
        typer.Option(
            help="standardise each image's colour channels before the trunk (models/"
            "standardise.py) [default: as the checkpoint]"
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Write a model bundle: s and p* chosen on held-out copies, whitening, threshold."""
    from multigrain.data.corpus.heldout import read_copy_set
    from multigrain.evaluation.heldout.select import (
        bundle_settings,
        select_settings,
        training_images,
    )
    from multigrain.inference.bundle import load_bundle, write_bundle
    from multigrain.models import MultiGrain
    from multigrain.models.weights import load_model
    from multigrain.runtime.distributed import resolve_device

    target = resolve_device(device)
    if checkpoint.is_dir():  # a bundle: its weights, chosen again (e.g. with another input)
        source = load_bundle(checkpoint)
        model, classes = source.model(), list(source.settings.classes)
    else:
        loaded = load_model(checkpoint)
        model, classes = loaded.model, loaded.classes
    if standardise_input is not None and standardise_input != model.standardise_input:
        architecture: dict[str, Any] = {
            **model.architecture(),
            "standardise_input": standardise_input,
        }
        rebuilt = MultiGrain(**architecture)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    model = model.to(target).eval()
    validation = read_copy_set(corpus / "validation")
    selection, whitening = select_settings(
        model, validation, training_images(corpus),
        resolutions=list(resolutions),
        exponents=list(exponents),
        device=target, whitening_description=f"{corpus}/train + train_unlabelled", report=echo,
    )  # fmt: skip
    provenance: dict[str, object] = json.loads(notes.read_text()) if notes else {}
    provenance["selection"] = selection.to_dict()
    provenance["checkpoint"] = str(checkpoint)
    settings = bundle_settings(
        model, classes, selection, notes=provenance, validation_name=str(validation.root)
    )
    write_bundle(output, model, settings, whitening=whitening)
    bundle = load_bundle(output)
    echo(
        f"bundle {output} ({bundle.identity}): s={settings.resolution}, p*={settings.exponent:g}, "
        f"whitening {'on' if whitening is not None else 'off'}, flip "
        f"{'on' if settings.query_flip else 'off'}; validation mAP "
        f"{selection.final.map if selection.final else float('nan'):.3f}"
    )
    if settings.threshold is not None:
        echo(
            f"threshold at 90% precision: {settings.threshold.score:.4f} "
            f"(recall {settings.threshold.recall:.3f})"
        )
