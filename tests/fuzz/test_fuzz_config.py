"""The config loader on arbitrary files and overrides: a config or a ConfigError of one line,
never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from damselfly.config import DaemonConfig, load_daemon_config, load_scheduler_config
from damselfly.errors import ConfigError

from . import TIMEOUT

pytestmark = pytest.mark.timeout(TIMEOUT)

# Real section and key names (so the loader goes deep), and others.
SECTIONS = [*DaemonConfig.model_fields, "seedPeer", "hijackHTTPS", "bogus"]
KEYS = ["enable", "ip", "port", "dir", "addrs", "rules", "regx", "hosts", "concurrentPieceCount",
        "sendIdleTimeout", "headTimeout", "taskTTL", "capacity", "server", "x"]  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS + SECTIONS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8)), values, max_size=4)


def one_line(e: ConfigError) -> None:
    assert "\n" not in str(e) and str(e), repr(str(e))


@given(documents)
def test_any_mapping_is_a_config_or_a_one_line_error(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "daemon.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            load_daemon_config(path)
        except ConfigError as e:
            one_line(e)
            assert str(path) in str(e)


@given(st.text(max_size=400))
def test_any_text_is_a_config_or_a_one_line_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scheduler.yaml"
        path.write_text(text)
        try:
            load_scheduler_config(path)
        except ConfigError as e:
            one_line(e)


@given(st.binary(max_size=200))
def test_any_bytes_are_a_config_or_a_one_line_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "daemon.yaml"
        path.write_bytes(data)
        try:
            load_daemon_config(path)
        except ConfigError as e:
            one_line(e)


@given(documents)
def test_any_override_is_a_config_or_a_one_line_error(overrides: dict[str, Any]) -> None:
    try:
        load_daemon_config(None, overrides)
    except ConfigError as e:
        one_line(e)
