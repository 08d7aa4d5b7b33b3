"""The `multigrain` command: thin subcommands over the library, one module per command group.

Every user error (MultiGrainError) is printed as one line on stderr with exit status 2;
no traceback. Run under torchrun with `torchrun --nproc-per-node N -m multigrain train ...`.
"""

from __future__ import annotations

import logging
import sys

import typer

from multigrain.cli.app import app
from multigrain.runtime.allocator import reexec_with_allocator
from multigrain.runtime.errors import MultiGrainError


def register_commands() -> None:
    """Import every command module; each registers its commands on `app` as it is imported.

    The one list of command groups, in the order `multigrain --help` shows them.
    """
    # Imported here, not at the top of this module, so that the allocator re-exec in main()
    # happens before any heavy library loads and `multigrain --help` stays as fast as it is
    # (another change will make it torch-free). Each module imports its heavy libraries
    # inside the command functions for the same reason.
    # isort: off
    from multigrain.cli import train, demo, info, corpus  # noqa: F401
    from multigrain.cli import embed, calibrate, classify, export, evaluate  # noqa: F401
    from multigrain.cli import search, threshold, duplicates, serve  # noqa: F401
    # isort: on


def main() -> None:
    """Entry point: run the app, turning MultiGrainError into one line and exit status 2.

    First re-executes itself under tcmalloc/jemalloc when one is installed (allocator.py).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        reexec_with_allocator()
        register_commands()
        app()  # standalone: usage errors are printed by typer with exit status 2
    except MultiGrainError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
