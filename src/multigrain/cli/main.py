"""The `multigrain` command: thin subcommands over the library, one module per command group.

Every user error (MultiGrainError) is printed as one line on stderr with exit status 2;
no traceback. Run under torchrun with `torchrun --nproc-per-node N -m multigrain train ...`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from multigrain.runtime.allocator import reexec_with_allocator
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.openblas import prefer_native_kernel
from multigrain.runtime.openmp import choose_wait_policy

if TYPE_CHECKING:
    import typer

#: Arguments that only print text: no job runs, so there is no re-exec under tcmalloc.
TEXT_ONLY_OPTIONS = frozenset({"--help", "--version"})
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def register_commands() -> None:
    """Import every command module; each registers its commands on `app` as it is imported.

    The one list of command groups, in the order `multigrain --help` shows them.
    """
    # Imported here, not at the top of this module, so that the allocator re-exec in main()
    # happens before any library loads. Each module imports its heavy libraries (torch,
    # numpy, faiss, PIL) inside the command functions, so that `multigrain --help` and
    # `multigrain COMMAND --help` stay fast (tests/test_cli_startup.py).
    # isort: off
    from multigrain.cli import train, demo, info, corpus  # noqa: F401
    from multigrain.cli import embed, calibrate, classify, export, evaluate  # noqa: F401
    from multigrain.cli import search, threshold, duplicates, serve  # noqa: F401
    # isort: on


def main() -> None:
    """Entry point: run the app; a MultiGrainError or a usage error is one line, status 2.

    First re-executes itself under tcmalloc/jemalloc when one is installed (allocator.py),
    unless it is only to print help or the version; torch's threads wait passively on a
    busy machine unless OMP_WAIT_POLICY says otherwise (openmp.py), and faiss' OpenBLAS runs
    the kernel for this CPU unless OPENBLAS_CORETYPE says otherwise (openblas.py).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    choose_wait_policy()  # before torch loads libgomp
    prefer_native_kernel()  # before faiss loads its OpenBLAS (openblas.py)
    reexec_for_jobs(sys.argv[1:])
    # imported after the re-exec, so that the process it replaces loads no more than the
    # interpreter and allocator.py (start-up time)
    try:
        import typer

        from multigrain.cli.app import app
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback either
        print("interrupted", file=sys.stderr)
        sys.exit(130)

    try:
        register_commands()
        # not standalone: Typer's usage errors come back here, to be printed as one line too
        status = app(standalone_mode=False)
    except typer.TyperException as error:  # a bad option value, a missing option ...
        if message := usage_line(error):  # empty for a bare `multigrain GROUP`: help shown
            typer.echo(f"error: {message}", err=True)
        sys.exit(getattr(error, "exit_code", 2))
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except MultiGrainError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted (SIGINT)", err=True)
        sys.exit(INTERRUPTED)
    # Typer turns Ctrl-C inside a command into a silent Exit(130); a command that reports
    # its own interruption (embed, train) leaves by sys.exit and never gets here
    if status == INTERRUPTED:
        typer.echo("interrupted (SIGINT): the command stopped before it finished", err=True)
    sys.exit(status if isinstance(status, int) else 0)  # `raise typer.Exit(3)` returns 3


def reexec_for_jobs(args: list[str]) -> None:
    """Re-execute under the allocator, unless `args` (sys.argv[1:]) only ask for text.

    No arguments (the help is shown), or --help or --version before any ``--``: nothing
    allocates, and the re-exec would be start-up time for nothing. A bad
    MULTIGRAIN_ALLOCATOR is one line on stderr, exit status 2.
    """
    options = args[: args.index("--")] if "--" in args else args
    if not args or TEXT_ONLY_OPTIONS.intersection(options):
        return
    try:
        reexec_with_allocator()
    except MultiGrainError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def usage_line(error: typer.TyperException) -> str:
    """Typer's usage error as one line, pointing at the command's --help; '' if none."""
    message = " ".join(error.format_message().split())
    context = getattr(error, "ctx", None)
    if message and context is not None:
        message += f" (see `{context.command_path} --help`)"
    return message
