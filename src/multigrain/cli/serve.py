"""The `serve` subcommand: the HTTP service of :mod:`multigrain.service.app` under uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo, greater_than
from multigrain.cli.outputs import folder_option
from multigrain.cli.serve_access import allowed_hosts, resolve_token


@app.command()
def serve(
    index: Annotated[Path, typer.Option("--index", help="index folder (`multigrain index`)")],
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            callback=folder_option("for the uploads"),
            help="folder where uploads are stored",
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c", help="weights file or bundle [default: the index's bundle]"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="file whose first line is the bearer token for adding and removing "
            "[default: $MULTIGRAIN_TOKEN, else no token]",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="the token itself (visible in ps: prefer --token-file)"),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="another Host name to answer (repeatable; '*' any) [default: the --host "
            "address and the loopback names]",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(callback=greater_than(0.0), help="largest upload in MiB")
    ] = 20.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="refuse larger images")] = 50_000_000,
    decode_memory_mb: Annotated[
        float | None,
        typer.Option(
            callback=greater_than(0.0),
            help="MiB that the images decoded at once may take [default: the decode of one "
            "RGB image at --max-pixels, 9 bytes a pixel]",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    max_batch: Annotated[
        int, typer.Option(min=1, help="images of concurrent requests embedded in one forward")
    ] = 16,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="how long a forward waits for more requests")
    ] = 5.0,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            callback=greater_than(0.0),
            help="seconds a request may wait for the model before a 503 [default: none]",
        ),
    ] = None,
) -> None:
    """Serve search, classification and index edits over HTTP (web page at /, API at /docs).

    The server locks the index folder while it runs: change the index through its API
    (POST /index, DELETE /index/{id}); `multigrain index add/remove/build` refuse it.
    """
    import uvicorn

    from multigrain.service.app import create_app
    from multigrain.service.guards import LOOPBACK_HOSTS

    token = resolve_token(token, token_file)
    if token is None and host not in LOOPBACK_HOSTS:
        typer.echo(
            f"warning: anyone who can reach {host}:{port} can add and remove images; "
            "give a token with --token-file or MULTIGRAIN_TOKEN",
            err=True,
        )
    hosts = allowed_hosts(host, allowed_host or [])
    decode_memory = None if decode_memory_mb is None else int(decode_memory_mb * 2**20)
    service = create_app(
        checkpoint=checkpoint,
        index_folder=index,
        data_dir=data_dir,
        token=token,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        device=device,
        max_batch=max_batch,
        batch_wait_s=batch_wait_ms / 1000,
        request_timeout=request_timeout,
        decode_memory_bytes=decode_memory,
        allowed_hosts=hosts,
    )
    threshold = service.state.service.threshold
    if threshold is not None:
        echo(f"hits scoring >= {threshold:.4f} are marked as matches (threshold.json or bundle)")
    budget = service.state.service.decode_budget.capacity
    echo(f"answering for the hosts {', '.join(hosts)} (--allowed-host adds names)")
    echo(f"images decoded at once take at most {budget / 2**20:.0f} MiB (--decode-memory-mb)")
    echo(f"serving {index} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(service, host=host, port=port)
