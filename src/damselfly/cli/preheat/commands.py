"""The typer commands ``damselfly preheat file`` and ``damselfly preheat image``.

Each takes its own arguments here and the shared options through
:func:`~.options.with_preheat_options`, runs :mod:`.runner` and prints with
:mod:`.report`. The runner is called through its module so that tests can stand
in for the network.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..exitcodes import ExitCode
from . import runner
from .options import PreheatOptions, with_preheat_options
from .report import report

PASSWORD_ENV = "DAMSELFLY_REGISTRY_PASSWORD"

preheat_app = typer.Typer(
    help="Warm the swarm before a rollout: have seed peers (or all peers) download files or an image.",
    no_args_is_help=True,
    add_completion=False,
)


@preheat_app.command("file")
@with_preheat_options
def preheat_file(
    options: PreheatOptions,
    urls: Annotated[list[str], typer.Argument(help="URL(s) to preheat")],
) -> None:
    """Have the swarm download URL(s) now, so later downloads find them warm."""
    outcome = asyncio.run(runner.run_files(options, list(urls)))
    raise typer.Exit(report(outcome, json_out=options.json_out))


@preheat_app.command("image")
@with_preheat_options
def preheat_image(
    options: PreheatOptions,
    image: Annotated[str, typer.Argument(help="REGISTRY/REPO:TAG (or @sha256:...)")],
    platform: Annotated[
        str, typer.Option("--platform", help="os/arch or os/arch/variant to pick from a manifest list")
    ] = "linux/amd64",
    username: Annotated[str, typer.Option("--username", "-u", help="registry user")] = "",
    password: Annotated[
        str,
        typer.Option("--password", "-p", envvar=PASSWORD_ENV, help=f"registry password (or ${PASSWORD_ENV})"),
    ] = "",
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="the registry speaks http, not https")
    ] = False,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="PEM CA that signed the registry's cert")
    ] = None,
    insecure_skip_verify: Annotated[
        bool, typer.Option("--insecure-skip-verify", help="do not verify the registry's certificate")
    ] = False,
    blob_task_id_by_digest: Annotated[
        bool,
        typer.Option(
            "--blob-task-id-by-digest/--blob-task-id-by-url",
            help="blob task IDs from the digest (the mirror's default, proxy.blobTaskIdByDigest) or the URL",
        ),
    ] = True,
) -> None:
    """Have the swarm download every blob of an image (config and layers) for one platform."""
    if username and not password:
        password = os.environ.get(PASSWORD_ENV, "")
    try:
        ca_pem = ca_cert.read_bytes() if ca_cert is not None else None
    except OSError as e:
        print(f"preheat: cannot read --ca-cert: {e}", file=sys.stderr)
        raise typer.Exit(ExitCode.USAGE) from None
    outcome = asyncio.run(
        runner.run_image(
            options,
            image,
            platform=platform,
            username=username,
            password=password,
            plain_http=plain_http,
            ca_pem=ca_pem,
            insecure_skip_verify=insecure_skip_verify,
            blob_task_id_by_digest=blob_task_id_by_digest,
        )
    )
    raise typer.Exit(report(outcome, json_out=options.json_out))
