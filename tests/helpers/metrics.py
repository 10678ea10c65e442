"""Reading a Damselfly process's Prometheus page in tests.

Counters of decisions taken (a scheduler's ``schedule_decision_total``, its
``back_to_source_total``, a proxy's ``read_ahead_total``) are causal points:
once a decision is counted it was taken, so a test can assert what was *not*
decided without waiting "a while".
"""

from __future__ import annotations

import urllib.request

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created", "_info")


def _value(page: str, name: str, labels: dict[str, str]) -> float:
    exported = False
    for family in text_string_to_metric_families(page):
        if any(name == family.name + suffix for suffix in _SUFFIXES):
            exported = True
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    # A labelled counter that was never incremented has no sample, but its family is on the
    # page; a name that is not on the page at all is a test asking for a metric that no longer
    # exists (renamed), which would otherwise read as a silent 0.
    if not exported:
        raise AssertionError(f"metric {name!r} is not exported by this process")
    return 0.0


async def sample(port: int, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` on ``http://127.0.0.1:port/metrics`` (0.0: absent)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        r.raise_for_status()
        return _value(await r.text(), name, labels)


def sample_now(port: int, name: str, **labels: str) -> float:
    """:func:`sample` for synchronous tests (a daemon in another process)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return _value(r.read().decode(), name, labels)
