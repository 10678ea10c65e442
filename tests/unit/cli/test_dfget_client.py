"""dfget's client against a fake DfdaemonDownload server on a real unix socket.

The fake plays the daemon's side of docs/PROTOCOL.md ("dfget to its daemon"):
it streams started/piece responses and writes the output, or ends the stream
with a status. These tests pin down dfget's side: exit codes, one-line errors,
and that a failed run leaves no new file at the output path.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.cli.exitcodes import ExitCode
from damselfly.cli.get import GetOptions, get_async

CONTENT = b"0123456789" * 1000
BIG_PIECE = 4 * 1024 * 1024
BIG = bytes(range(256)) * (40 * 1024 * 1024 // 256 + 7)  # past h2call's 16 MiB windows, twice


def _write(path: Path) -> None:
    path.write_bytes(CONTENT)


class FakeDaemon(dfdaemon_pb2_grpc.DfdaemonDownloadServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def DownloadTask(self, request: Any, context: Any) -> AsyncIterator[Any]:
        d = request.download
        self.requests.append(d)
        kind = d.url.rsplit("/", 1)[-1]
        out = Path(d.output_path)
        if kind == "origin404":  # as Damselfly's and Dragonfly's daemons: INTERNAL, Backend details
            backend = b'{"message":"404 Not Found","header":{"server":"o"},"status_code":404}'
            details = (("grpc-status-details-bin", backend),)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"origin answered 404 Not Found for {d.url}", details
            )
        if d.need_piece_content:
            async for msg in self._with_content(kind, context):
                yield msg
            return
        yield dfdaemon_pb2.DownloadTaskResponse(
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                content_length=len(CONTENT)
            )
        )
        half = len(CONTENT) // 2
        for number, (offset, length) in enumerate([(0, half), (half, len(CONTENT) - half)]):
            piece = common_pb2.Piece(number=number, offset=offset, length=length)
            yield dfdaemon_pb2.DownloadTaskResponse(
                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(piece=piece)
            )
        if kind == "digest":
            _write(out)  # a misbehaving daemon: leaves the file, then fails
            await context.abort(grpc.StatusCode.DATA_LOSS, "expected sha256:aa, got sha256:bb")
        if kind == "timeout":
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "download timed out after 1 s")
        if kind == "many":  # more bytes of messages than the client's flow-control windows
            for number in range(10000):
                piece = common_pb2.Piece(number=2 + number, offset=0, length=0, digest="crc32:0")
                yield dfdaemon_pb2.DownloadTaskResponse(
                    download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(piece=piece)
                )
        if kind in ("ok", "many"):
            _write(out)

    async def _with_content(self, kind: str, context: Any) -> AsyncIterator[Any]:
        """As a daemon answers need_piece_content: every piece listed first, then each with its bytes."""
        content = BIG if kind == "big" else CONTENT
        step = len(content) // 4 if kind != "big" else BIG_PIECE
        offsets = range(0, len(content), step)
        spans = [(n, off, min(step, len(content) - off)) for n, off in enumerate(offsets)]
        listed = [common_pb2.Piece(number=n, offset=off, length=ln) for n, off, ln in spans]
        if kind == "short":
            listed.append(common_pb2.Piece(number=len(spans), offset=len(content), length=0))
        yield dfdaemon_pb2.DownloadTaskResponse(
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
                content_length=len(content), pieces=listed
            )
        )
        for n, off, ln in reversed(spans):  # any order: each lands at its offset
            if kind == "cut" and n < len(spans) - 1:
                await context.abort(grpc.StatusCode.INTERNAL, "connection to the parent lost")
            piece = common_pb2.Piece(number=n, offset=off, length=ln, content=content[off : off + ln])
            yield dfdaemon_pb2.DownloadTaskResponse(
                download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(piece=piece)
            )
        if kind == "digest":
            await context.abort(grpc.StatusCode.DATA_LOSS, "expected sha256:aa, got sha256:bb")


@pytest.fixture
async def daemon(short_tmp: Path) -> AsyncIterator[tuple[FakeDaemon, Path]]:
    sock = short_tmp / "fake.sock"
    fake = FakeDaemon()
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonDownloadServicer_to_server(fake, server)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    try:
        yield fake, sock
    finally:
        await server.stop(None)


async def _get(url: str, output: Path, sock: Path, **kw: Any) -> tuple[ExitCode, str]:
    err = io.StringIO()
    code = await get_async(GetOptions(url=url, output=str(output), endpoint=str(sock), **kw), stderr=err)
    return code, err.getvalue()


async def test_success_reports_one_line(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    fake, sock = daemon
    out = short_tmp / "out.bin"
    code, err = await _get("http://h/ok", out, sock, digest="sha256:" + "A" * 64, headers=["X-A: 1"])
    assert code is ExitCode.OK, err
    assert out.read_bytes() == CONTENT
    assert len(err.strip().splitlines()) == 1 and "9.8 KiB" in err and str(out) in err
    sent = fake.requests[0]
    assert sent.output_path == str(out) and Path(sent.output_path).is_absolute()
    assert sent.digest == "sha256:" + "a" * 64
    assert dict(sent.request_header) == {"X-A": "1"}


async def test_digest_mismatch_removes_the_new_file(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    _, sock = daemon
    out = short_tmp / "out.bin"
    code, err = await _get("http://h/digest", out, sock)
    assert code is ExitCode.DIGEST_MISMATCH
    assert err.startswith("dfget: error: digest mismatch") and len(err.strip().splitlines()) == 1
    assert not out.exists()


async def test_failure_keeps_a_file_that_was_there_before(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path
) -> None:
    _, sock = daemon
    out = short_tmp / "out.bin"
    out.write_bytes(b"mine")
    code, _ = await _get("http://h/origin404", out, sock, overwrite=True)
    assert code is ExitCode.ORIGIN
    assert out.read_bytes() == b"mine"


async def test_an_existing_output_is_refused_without_overwrite(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path
) -> None:
    fake, sock = daemon
    out = short_tmp / "out.bin"
    out.write_bytes(b"mine")
    code, err = await _get("http://h/ok", out, sock)
    assert code is ExitCode.OUTPUT
    assert err == f"dfget: error: output path {out} already exists; pass --overwrite to replace it\n"
    assert out.read_bytes() == b"mine" and fake.requests == []  # refused before asking the daemon


async def test_overwrite_is_sent_to_the_daemon(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    fake, sock = daemon
    out = short_tmp / "out.bin"
    out.write_bytes(b"mine")
    code, err = await _get("http://h/ok", out, sock, overwrite=True)
    assert code is ExitCode.OK, err
    assert out.read_bytes() == CONTENT
    assert fake.requests[0].overwrite and not fake.requests[0].need_piece_content


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "fake.sock")


@pytest.mark.parametrize(("kind", "content"), [("ok", CONTENT), ("big", BIG)])
async def test_transfer_writes_the_streamed_content(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path, kind: str, content: bytes
) -> None:
    fake, sock = daemon
    out = short_tmp / "out.bin"
    code, err = await _get(f"http://h/{kind}", out, sock, transfer_from_dfdaemon=True)
    assert code is ExitCode.OK, err
    assert out.read_bytes() == content
    sent = fake.requests[0]
    # As Rust's dfget sends it: no output path, the content asked for (src/bin/dfget/main.rs at ff17c0b).
    assert sent.need_piece_content and not sent.HasField("output_path")
    assert _leftovers(short_tmp) == ["out.bin"]


@pytest.mark.parametrize(
    ("kind", "code", "words"),
    [
        ("cut", ExitCode.UNEXPECTED, "parent lost"),
        ("digest", ExitCode.DIGEST_MISMATCH, "digest mismatch"),
        ("short", ExitCode.UNEXPECTED, "1 announced piece(s) missing"),
    ],
)
async def test_transfer_failure_leaves_no_file(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path, kind: str, code: ExitCode, words: str
) -> None:
    _, sock = daemon
    out = short_tmp / "out.bin"
    got, err = await _get(f"http://h/{kind}", out, sock, transfer_from_dfdaemon=True)
    assert got is code and words in err, err
    assert _leftovers(short_tmp) == []


async def test_transfer_failure_keeps_the_old_output(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path
) -> None:
    _, sock = daemon
    out = short_tmp / "out.bin"
    out.write_bytes(b"mine")
    code, _ = await _get("http://h/cut", out, sock, transfer_from_dfdaemon=True, overwrite=True)
    assert code is ExitCode.UNEXPECTED
    assert out.read_bytes() == b"mine" and _leftovers(short_tmp) == ["out.bin"]


async def test_origin_error(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    _, sock = daemon
    code, err = await _get("http://h/origin404", short_tmp / "o", sock)
    assert code is ExitCode.ORIGIN and "404" in err
    assert not (short_tmp / "o").exists()


async def test_timeout(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    _, sock = daemon
    code, _ = await _get("http://h/timeout", short_tmp / "o", sock, timeout="1s")
    assert code is ExitCode.TIMEOUT
    assert not (short_tmp / "o").exists()


async def test_success_without_a_file_is_an_error(daemon: tuple[FakeDaemon, Path], short_tmp: Path) -> None:
    _, sock = daemon
    code, err = await _get("http://h/nofile", short_tmp / "o", sock)
    assert code is ExitCode.UNEXPECTED and "wrote no file" in err


async def test_no_daemon_socket(short_tmp: Path) -> None:
    code, err = await _get("http://h/ok", short_tmp / "o", short_tmp / "none.sock")
    assert code is ExitCode.DAEMON_UNAVAILABLE
    assert "damselfly up --data-dir" in err and len(err.strip().splitlines()) == 1


async def test_stale_socket_file(short_tmp: Path) -> None:
    import socket

    path = short_tmp / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    code, err = await _get("http://h/ok", short_tmp / "o", path)
    assert code is ExitCode.DAEMON_UNAVAILABLE, err
    assert not (short_tmp / "o").exists()


async def test_a_long_stream_keeps_the_flow_control_windows_open(
    daemon: tuple[FakeDaemon, Path], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client opens windows of h2call.WINDOW and tops them up; with small ones the 10000
    # messages (~250 KB) would stall the daemon's sends unless the top-ups work.
    from damselfly.cli import h2call

    monkeypatch.setattr(h2call, "WINDOW", 70_000)
    _, sock = daemon
    code, err = await _get("http://h/many", short_tmp / "o", sock)
    assert code is ExitCode.OK, err
    assert (short_tmp / "o").read_bytes() == CONTENT


async def test_a_daemon_that_hangs_up_is_unavailable_not_a_hang(short_tmp: Path) -> None:
    import socket
    import threading

    path = short_tmp / "rude.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def hang_up() -> None:
        conn, _ = srv.accept()
        conn.recv(1024)  # the preface and the request, then nothing but a close
        conn.close()

    t = threading.Thread(target=hang_up)
    t.start()
    try:
        code, err = await _get("http://h/ok", short_tmp / "o", path, timeout="30s")
    finally:
        t.join()
        srv.close()
    assert code is ExitCode.DAEMON_UNAVAILABLE, err
    assert "damselfly up --data-dir" in err and not (short_tmp / "o").exists()
