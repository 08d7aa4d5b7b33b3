"""What every subcommand module shares: the Typer app and small argument helpers."""

from __future__ import annotations

from typing import Any

import typer

from multigrain.runtime.errors import MultiGrainError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MultiGrain: one image embedding for classes, instances and copies.",
)


def parse_enum(kind: Any, value: str, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise MultiGrainError(f"{option} {value!r} is not one of: {valid}") from None


def parse_list(text: str, option: str, kind: type = int) -> list[Any]:
    """'1,2,3' -> [1, 2, 3] (of `kind`), with an error naming the option."""
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MultiGrainError(f"{option} wants comma-separated values, got {text!r}") from None


def echo(message: str) -> None:
    typer.echo(message)
