"""dfget --rate-limit: parsed locally, sent as the header the daemon consumes."""

from __future__ import annotations

import pytest

from damselfly.cli.exitcodes import DfgetFailure
from damselfly.cli.get import RATE_LIMIT_HEADER, GetOptions, parse_rate, plan
from damselfly.daemon import download_rpc
from damselfly.daemon.download_rpc import take_rate_limit
from damselfly.domain import DownloadSpec
from damselfly.errors import InvalidArgument


def test_parse_rate_accepts_sizes_with_or_without_per_second() -> None:
    assert parse_rate("10MB/s") == 10_000_000
    assert parse_rate("50MiB") == 50 * 1024 * 1024
    assert parse_rate("1000") == 1000
    for bad in ("0", "fast", "-1MB"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_plan_puts_the_rate_in_the_header_the_daemon_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert RATE_LIMIT_HEADER == download_rpc.RATE_LIMIT_HEADER
    p = plan(GetOptions(url="http://o/f", output=str(tmp_path / "f"), rate_limit="2MB/s", endpoint="/x.sock"))
    assert p.spec.request_header[RATE_LIMIT_HEADER] == "2000000"
    with pytest.raises(DfgetFailure):
        plan(GetOptions(url="http://o/f", output=str(tmp_path / "f"), rate_limit="lots", endpoint="/x.sock"))


def test_daemon_consumes_and_strips_the_header() -> None:
    spec = DownloadSpec(url="http://o/f", request_header={"x-damselfly-rate-limit": "3000000", "A": "b"})
    limiter = take_rate_limit(spec)
    assert limiter is not None and limiter.rate == 3_000_000
    assert spec.request_header == {"A": "b"}
    assert take_rate_limit(DownloadSpec(url="http://o/f")) is None
    with pytest.raises(InvalidArgument):
        take_rate_limit(DownloadSpec(url="http://o/f", request_header={RATE_LIMIT_HEADER: "soon"}))
