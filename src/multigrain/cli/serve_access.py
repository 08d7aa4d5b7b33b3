"""Who may use `multigrain serve`: its token (from where) and the host names it answers.

The token comes from ``--token-file PATH`` (first line), else ``--token``, else the
``MULTIGRAIN_TOKEN`` environment variable. A blank one is refused: it used to switch
authentication off without a word. ``--token`` still works but warns: a command line is
visible to every user of the machine (``ps``, ``/proc/PID/cmdline``).

The Host names answered default to the address the server listens on and the loopback
names; on a wildcard address (0.0.0.0, ::) also the machine's own names. Any other name is
answered 400 (DNS rebinding), and ``--allowed-host`` adds names (``*`` answers any).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import typer

from multigrain.runtime.errors import MultiGrainError

TOKEN_VARIABLE = "MULTIGRAIN_TOKEN"
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def resolve_token(
    token: str | None, token_file: Path | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The bearer token to require, or None (see the module docstring).

    Raises MultiGrainError with the fix for a blank token, an unreadable token file, or
    both --token and --token-file.
    """
    if token is not None and token_file is not None:
        raise MultiGrainError("give the token once: --token-file or --token, not both")
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise MultiGrainError(f"cannot read the token file {token_file}: {error}") from None
        first = lines[0].strip() if lines else ""
        if not first:
            raise MultiGrainError(
                f"the token file {token_file} is empty: write the token on its first line"
            )
        return first
    if token is not None:
        typer.echo(
            "warning: a token given with --token is visible to every user of this machine "
            f"(ps, /proc): use --token-file PATH or the {TOKEN_VARIABLE} environment "
            "variable instead",
            err=True,
        )
        if not token.strip():
            raise MultiGrainError("--token is empty: give a non-empty token, or none")
        return token
    value = environ.get(TOKEN_VARIABLE)
    if value is not None and not value.strip():
        raise MultiGrainError(
            f"{TOKEN_VARIABLE} is set but empty, which would let anyone edit the index: set "
            f"it to a token, or unset it to serve without one"
        )
    return value


def allowed_hosts(host: str, extra: Sequence[str]) -> list[str]:
    """The Host names to answer when listening on `host`, plus `extra` (--allowed-host)."""
    from multigrain.service.guards import LOOPBACK_HOSTS  # starlette: not at `--help` time

    names = list(LOOPBACK_HOSTS)
    if host in WILDCARD_ADDRESSES:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.insert(0, host)
    names += list(extra)
    return list(dict.fromkeys(name for name in names if name))
