"""What every subcommand module shares: the Typer app and small argument helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import TypeVar

import typer

from multigrain.runtime.errors import MultiGrainError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MultiGrain: one image embedding for classes, instances and copies.",
)

Item = TypeVar("Item")
EnumType = TypeVar("EnumType", bound=Enum)


def parse_enum(kind: type[EnumType], value: str, option: str) -> EnumType:
    """`value` as a member of `kind`; MultiGrainError naming `option` and the valid values.

    Options typed with the Enum itself are parsed by Typer; this is for the few whose bad
    value must be reported as a one-line MultiGrainError (`train --schedule`).
    """
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(str(member.value) for member in kind)
        raise MultiGrainError(f"{option} {value!r} is not one of: {valid}") from None


def comma_list(kind: Callable[[str], Item]) -> Callable[[str | Sequence[Item]], list[Item]]:
    """A Typer ``parser`` for an option that takes comma-separated values: "224,320,500".

    Use it on a ``Sequence[...]`` option (a ``list`` one would be a repeated option instead)
    with a tuple default, which Typer hands to the parser as it is.
    """

    def parse(value: str | Sequence[Item]) -> list[Item]:
        if not isinstance(value, str):
            return list(value)  # the default
        try:
            return [kind(part.strip()) for part in value.split(",") if part.strip()]
        except ValueError:
            name = getattr(kind, "__name__", "value")
            raise ValueError(
                f"{value!r} is not a comma-separated list of {name} values (e.g. 1,2,3)"
            ) from None

    return parse


def echo(message: str) -> None:
    typer.echo(message)
