"""Reading a Damselfly process's Prometheus page in tests.

Counters of decisions taken (a scheduler's ``schedule_decision_total``, its
``back_to_source_total``) are causal points: once a decision is counted it was
taken, so a test can assert what was *not* decided without waiting "a while".
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


async def sample(port: int, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` on ``http://127.0.0.1:port/metrics``;
    0.0 when absent (a labelled counter that was never incremented)."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        r.raise_for_status()
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
