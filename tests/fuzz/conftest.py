"""Bounded fuzzing with Hypothesis: a fixed, small budget so the whole folder runs in well under
a minute, derandomized so CI is repeatable. ``DAMSELFLY_FUZZ=explore`` runs many more random
examples (locally, when hunting)."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=timedelta(seconds=2),  # a bound on a hang per example; each takes well under 10 ms
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=5_000, deadline=timedelta(seconds=2), database=None)
settings.load_profile(os.environ.get("DAMSELFLY_FUZZ", "ci"))
