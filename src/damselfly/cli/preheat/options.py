"""The options ``preheat file`` and ``preheat image`` share, declared and checked once.

Typer builds a command's flags from its function's signature and cannot take a
group of flags as one dataclass. So :func:`shared_flags` declares the fifteen
shared flags in its signature and turns them into a checked
:class:`PreheatOptions` in its body; :func:`with_preheat_options` gives a
command those flags after its own (``--help`` lists them in that order) and
hands the command the one :class:`PreheatOptions`. A bad value exits 2 before
any network.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ...errors import InvalidArgument
from ..exitcodes import ExitCode

if TYPE_CHECKING:
    from ...security.tls import TLSFiles

SCHEDULER_ENV = "DAMSELFLY_SCHEDULER"
DEFAULT_SCHEDULER = "127.0.0.1:8002"


@dataclass
class PreheatOptions:
    """The shared options, parsed: what every preheat request and its Stat polls carry."""

    scheduler: str = DEFAULT_SCHEDULER
    scope: str = "single_seed_peer"
    ips: list[str] = field(default_factory=list)
    count: int | None = None
    percentage: int | None = None
    tag: str = ""
    application: str = ""
    piece_length: int | None = None
    filtered_query_params: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    concurrent_tasks: int | None = None
    concurrent_peers: int | None = None
    interval_s: float = 0.5
    json_out: bool = False
    tls: TLSFiles | None = None  # mTLS toward the scheduler (--tls-ca-cert, --tls-cert, --tls-key)


Scheduler = Annotated[
    str, typer.Option("--scheduler", "-s", envvar=SCHEDULER_ENV, help="scheduler gRPC address HOST:PORT")
]
ScopeOpt = Annotated[
    str, typer.Option("--scope", help="single_seed_peer (default), all_seed_peers or all_peers")
]
Ips = Annotated[list[str] | None, typer.Option("--ip", help="preheat on the host(s) with this IP (repeat)")]
Count = Annotated[int | None, typer.Option("--count", help="all_peers: this many hosts (seeds first)")]
Percentage = Annotated[
    int | None, typer.Option("--percentage", help="all_peers: this share of hosts (1-100)")
]
Tag = Annotated[str, typer.Option("--tag", help="task tag (as the later downloads will use)")]
Application = Annotated[str, typer.Option("--application", help="task application")]
PieceLength = Annotated[str | None, typer.Option("--piece-length", help="piece length, e.g. 4MiB")]
Filtered = Annotated[
    list[str] | None, typer.Option("--filtered-query-param", help="query parameter left out of the task ID")
]
Header = Annotated[
    list[str] | None, typer.Option("--header", "-H", help="'Name: value' for the origin (repeat)")
]
Timeout = Annotated[
    str | None, typer.Option("--timeout", help="give up after this long, e.g. 30m (default 30m)")
]
ConcTasks = Annotated[int | None, typer.Option("--concurrent-tasks", help="tasks preheated at a time (8)")]
ConcPeers = Annotated[int | None, typer.Option("--concurrent-peers", help="hosts per task at a time (50)")]
Interval = Annotated[float, typer.Option("--interval", help="seconds between progress polls")]
JsonOut = Annotated[bool, typer.Option("--json", help="print the per-task results as JSON")]
TLSCaCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca-cert", envvar="DAMSELFLY_TLS_CA_CERT", help="mTLS to the scheduler: the fleet's CA"
    ),
]
TLSCert = Annotated[
    Path | None,
    typer.Option("--tls-cert", envvar="DAMSELFLY_TLS_CERT", help="mTLS: this client's certificate"),
]
TLSKey = Annotated[
    Path | None, typer.Option("--tls-key", envvar="DAMSELFLY_TLS_KEY", help="mTLS: this client's key")
]
_TLS_FLAGS = {"caCert": "--tls-ca-cert", "cert": "--tls-cert", "key": "--tls-key"}


def shared_flags(
    scheduler: Scheduler = DEFAULT_SCHEDULER,
    scope: ScopeOpt = "single_seed_peer",
    ip: Ips = None,
    count: Count = None,
    percentage: Percentage = None,
    tag: Tag = "",
    application: Application = "",
    piece_length: PieceLength = None,
    filtered_query_param: Filtered = None,
    header: Header = None,
    timeout: Timeout = None,
    concurrent_tasks: ConcTasks = None,
    concurrent_peers: ConcPeers = None,
    interval: Interval = 0.5,
    json_out: JsonOut = False,
    tls_ca_cert: TLSCaCert = None,
    tls_cert: TLSCert = None,
    tls_key: TLSKey = None,
) -> PreheatOptions:
    """The shared flags as typer passes them -> :class:`PreheatOptions`; raises InvalidArgument."""
    from ...config import TLSConfig
    from ...errors import ConfigError
    from ...scheduler.preheat import Scope
    from ...security.tls import load_tls
    from ..parsing import parse_duration, parse_headers, parse_piece_length

    files = {"ca_cert": tls_ca_cert, "cert": tls_cert, "key": tls_key}
    try:
        tls = load_tls(TLSConfig(**{k: str(v) if v else "" for k, v in files.items()}), _TLS_FLAGS)
    except ConfigError as e:
        raise InvalidArgument(str(e)) from None
    return PreheatOptions(
        scheduler=scheduler,
        scope=Scope.parse(scope).value,
        ips=list(ip or []),
        count=count,
        percentage=percentage,
        tag=tag,
        application=application,
        piece_length=parse_piece_length(piece_length) if piece_length else None,
        filtered_query_params=list(filtered_query_param or []),
        headers=parse_headers(list(header or [])),
        timeout_s=parse_duration(timeout) if timeout else None,
        concurrent_tasks=concurrent_tasks,
        concurrent_peers=concurrent_peers,
        interval_s=max(0.05, interval),
        json_out=json_out,
        tls=tls,
    )


_SHARED = list(inspect.signature(shared_flags, eval_str=True).parameters.values())


def with_preheat_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(options, ...)`` the shared flags; it receives them as one :class:`PreheatOptions`.

    Typer reads the returned function's ``__signature__``: the command's own
    parameters (all but the first, ``options``), then :func:`shared_flags`'.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

    @functools.wraps(command)
    def with_options(**flags: Any) -> None:
        shared = {p.name: flags.pop(p.name) for p in _SHARED}
        try:
            options = shared_flags(**shared)
        except InvalidArgument as e:
            print(f"preheat: {e}", file=sys.stderr)
            raise typer.Exit(ExitCode.USAGE) from None
        command(options, **flags)

    params = own + _SHARED
    with_options.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in params}
    return with_options
