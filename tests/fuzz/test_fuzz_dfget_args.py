"""dfget's argument parser (cli/dfget_args.py) and its checks on arbitrary command lines: a plan,
a usage exit (2) or a dfget failure with its exit code and one line, never an unexpected error."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from damselfly.cli import dfget_args, get
from damselfly.cli.exitcodes import DfgetFailure, ExitCode

from . import TIMEOUT

pytestmark = pytest.mark.timeout(TIMEOUT)

FLAGS = ["--digest", "--tag", "--application", "-H", "--header", "--filtered-query-param", "--piece-length",
         "--timeout", "--rate-limit", "-e", "--endpoint", "-O", "--output"]  # fmt: skip
SWITCHES = ["--disable-back-to-source", "--overwrite", "--transfer-from-dfdaemon", "--no-progress"]
SAMPLES = ["http://h/f", "https://[", "ftp://x", "4MiB", "3", "10MB/s", "fast", "sha256:" + "a" * 64,
           "crc32:1", "90s", "-1", "0", "1e400", "unix:///tmp/x.sock", "Name: v", "\x00"]  # fmt: skip
words = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SAMPLES),
)


@given(st.lists(st.one_of(st.sampled_from(FLAGS + SWITCHES), words), max_size=10))
def test_any_command_line_is_a_plan_or_a_clear_exit(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # relative paths land here
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                opts = dfget_args.parse(argv)
        except SystemExit as e:
            assert e.code == 2  # argparse's usage error
            return
        try:
            get.plan(opts)
        except DfgetFailure as e:
            assert e.code != ExitCode.UNEXPECTED, e.message
            assert e.message and "\n" not in e.message


@given(
    st.sampled_from(["--piece-length", "--timeout", "--rate-limit", "--digest", "-H", "-e"]),
    words,
    st.one_of(st.just("http://origin.example/f"), words),
)
def test_one_bad_value_is_a_usage_error_naming_it(flag: str, value: str, url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [url, "-O", str(Path(tmp) / "out"), flag, value]
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                opts = dfget_args.parse(argv)
        except SystemExit as e:
            assert e.code == 2
            return
        try:
            get.plan(opts)
        except DfgetFailure as e:
            assert e.code in (ExitCode.USAGE, ExitCode.OUTPUT), e.message
            assert e.message and "\n" not in e.message
