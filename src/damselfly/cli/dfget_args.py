"""dfget's command line, parsed without typer: the one parser of ``dfget`` and ``damselfly get``.

Why not typer here: dfget is started once per download, often by the hundred on
one host, and every millisecond before its request reaches the daemon is on the
download's critical path. Importing the whole ``damselfly`` typer app and
building its commands cost ~0.18 s of the ~0.3 s dfget spent before its request;
this module imports argparse and :mod:`.get` only. ``damselfly get`` is routed
here by :mod:`.entry` before typer loads, and the typer app's ``get`` command
passes its arguments here too, so both spellings share this parser.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from . import get
from .get import GetOptions
from .parsing import DEFAULT_ENDPOINT, ENDPOINT_ENV


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Download URL through the local daemon (P2P) to --output.",
    )
    p.add_argument("url", metavar="URL", help="http(s) URL to download")
    p.add_argument("-O", "--output", required=True, help="where to write the file")
    p.add_argument("--digest", help="expected digest: sha256:<hex>, sha512:<hex> or crc32:<n>")
    p.add_argument("--tag", default="", help="tag: a different tag is a different task")
    p.add_argument("--application", default="", help="application name, part of the task ID")
    p.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value' sent to the origin; repeatable"
    )
    p.add_argument(
        "--filtered-query-param",
        action="append",
        default=[],
        help="query parameter left out of the task ID; repeatable (replaces the defaults)",
    )
    p.add_argument("--piece-length", help="piece length, e.g. 4MiB")
    p.add_argument(
        "--disable-back-to-source", action="store_true", help="fail rather than download from the origin"
    )
    p.add_argument("--timeout", help="give up after this long, e.g. 90s, 30m, 2h")
    p.add_argument(
        "--rate-limit", help="limit this download, e.g. 10MB/s or 50MiB (under the daemon's host-wide limit)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output if it exists (default: refuse it)"
    )
    p.add_argument(
        "--transfer-from-dfdaemon",
        action="store_true",
        help="have the daemon send the content through its socket and write it here "
        "(automatic when the daemon cannot see this file system, e.g. dfget in a pod)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "-e",
        "--endpoint",
        default=None,
        help=f"the daemon's unix socket, a path or unix:///path (env {ENDPOINT_ENV}; "
        f"default {DEFAULT_ENDPOINT})",
    )
    return p


def parse(argv: Sequence[str], prog: str = "dfget") -> GetOptions:
    """``argv`` (without the program name) -> :class:`~.get.GetOptions`; exits 2 on a usage error."""
    ns = build_parser(prog).parse_args(list(argv))
    return GetOptions(
        url=ns.url,
        output=ns.output,
        digest=ns.digest,
        tag=ns.tag,
        application=ns.application,
        headers=list(ns.header),
        filtered_query_params=list(ns.filtered_query_param),
        piece_length=ns.piece_length,
        disable_back_to_source=ns.disable_back_to_source,
        timeout=ns.timeout,
        rate_limit=ns.rate_limit,
        progress=not ns.no_progress,
        overwrite=ns.overwrite,
        transfer_from_dfdaemon=ns.transfer_from_dfdaemon,
        endpoint=ns.endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT,
    )


def run(argv: Sequence[str], prog: str = "dfget") -> int:
    """Parse and download; the exit code (argparse exits 2 itself on a usage error)."""
    return get.run_get(parse(argv, prog))  # looked up at call time: tests replace run_get
