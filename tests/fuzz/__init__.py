"""Bounded fuzzing (Hypothesis); see conftest.py for the budget."""

import os

# A bound on a hang of a whole fuzz test under the CI budget; exploring runs for as long as it takes.
TIMEOUT = 60 if os.environ.get("DAMSELFLY_FUZZ", "ci") == "ci" else 24 * 3600
