"""What every subcommand module shares: the Typer app and small argument helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, TypeVar

import typer

import multigrain
from multigrain.runtime.errors import MultiGrainError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MultiGrain: one image embedding for classes, instances and copies.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"multigrain {multigrain.__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """The options of `multigrain` itself, before the command (--version)."""


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


def comma_list(
    kind: Callable[[str], Item], *, at_least: float | None = None, above: float | None = None
) -> Callable[[str | Sequence[Item]], list[Item]]:
    """A Typer ``parser`` for an option that takes comma-separated values: "224,320,500".

    Use it on a ``Sequence[...]`` option (a ``list`` one would be a repeated option instead)
    with a tuple default, which Typer hands to the parser as it is. Every value must be
    >= `at_least` and > `above` when they are given (numbers only).
    """

    def parse(value: str | Sequence[Item]) -> list[Item]:
        if not isinstance(value, str):
            return list(value)  # the default
        try:
            values = [kind(part.strip()) for part in value.split(",") if part.strip()]
        except ValueError:
            name = getattr(kind, "__name__", "value")
            raise ValueError(
                f"{value!r} is not a comma-separated list of {name} values (e.g. 1,2,3)"
            ) from None
        for item in values if at_least is not None or above is not None else ():
            number = float(item)  # type: ignore[arg-type]  # bounds are given for numbers only
            low = at_least if at_least is not None else above
            if (at_least is not None and number < at_least) or (
                above is not None and number <= above
            ):
                bound = f"{'>=' if at_least is not None else '>'} {low:g}"
                raise ValueError(
                    f"{item} in {value!r} is out of range: every value must be {bound}"
                )
        return values

    return parse


def greater_than(
    bound: float, *, below: float | None = None
) -> Callable[[float | None], float | None]:
    """A Typer ``callback`` refusing values <= `bound` (and >= `below`): an open range.

    Typer's ``min=``/``max=`` are inclusive; a GeM exponent must be > 0 and a precision in
    (0, 1). Values are checked as they are parsed, so the error is a usage error.
    """

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if below is not None and not bound < value < below:
            raise typer.BadParameter(f"{value:g} is not in ({bound:g}, {below:g}): use one inside")
        if value <= bound:
            raise typer.BadParameter(f"{value:g} is not > {bound:g}: use a value above {bound:g}")
        return value

    return check


def echo(message: str) -> None:
    typer.echo(message)
