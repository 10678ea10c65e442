"""What a parent pays to tell a child of one piece: a SyncPieces message against a plain frame.

A relaying daemon tells each Damselfly child of every piece twice (while it
arrives, and once held): as gRPC SyncPieces messages, some 770 gRPC messages per
256 MiB relayed at k = 4 children with the scheduler's and dfget's, until
SyncPieces between Damselfly daemons moved to the piece port
(daemon/transfer/announce.py; Dragonfly's children still get gRPC). This measures
the sender's CPU per message for the same announcements two ways, each to a client
in a process of its own on loopback:

* ``grpc``: ``DfdaemonUpload.SyncPieces`` on a ``grpc.aio`` server, one
  ``SyncPiecesResponse`` per piece, as the daemon's upload service sends them;
* ``frames``: the same numbers as 20-byte frames (u32 number, u64 offset, u64
  length) written to a plain asyncio stream, one write per piece, drained as the
  daemon's piece server drains its sends: what an announcement on a connection of
  Damselfly's own would cost.

    .venv/bin/python benchmarks/announce_cost.py [--messages 5000] [--runs 5]

Prints JSON: the sender's CPU microseconds per message for each way (median of
``--runs``, the two ways alternating) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import struct
import sys

import grpc

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc

FRAME = struct.Struct(">IQQ")
PIECE = 4 * 1024 * 1024


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Upload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    def __init__(self, count: int) -> None:
        self.count = count

    async def SyncPieces(
        self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.aio.ServicerContext
    ) -> None:
        for n in range(self.count):
            await context.write(dfdaemon_pb2.SyncPiecesResponse(number=n, offset=n * PIECE, length=PIECE))


async def frames_client(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        await reader.readexactly(FRAME.size)
    writer.close()
    await writer.wait_closed()


async def grpc_client(port: int, count: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
        got = 0
        async for _ in stub.SyncPieces(dfdaemon_pb2.SyncPiecesRequest(host_id="bench", task_id="t")):
            got += 1
    if got != count:
        raise SystemExit(f"announce_cost: the gRPC client got {got} of {count} messages")


async def run_client(kind: str, port: int, count: int) -> float:
    """Start the client in a process of its own; the server's CPU seconds until it exits."""
    before = cpu_s()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", kind, "--port", str(port), "--messages", str(count)
    )
    if await child.wait() != 0:
        raise SystemExit(f"announce_cost: the {kind} client failed")
    return cpu_s() - before


async def measure(count: int, runs: int) -> dict[str, object]:
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(Upload(count), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def send_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(count):
            writer.write(FRAME.pack(n, n * PIECE, PIECE))
            await writer.drain()
        await reader.read()  # the client's close
        writer.close()

    plain = await asyncio.start_server(send_frames, "127.0.0.1", 0)
    frames_port = plain.sockets[0].getsockname()[1]
    per_message: dict[str, list[float]] = {"grpc": [], "frames": []}
    try:
        for i in range(runs):
            order = ("grpc", "frames") if i % 2 == 0 else ("frames", "grpc")
            for kind in order:
                port = grpc_port if kind == "grpc" else frames_port
                per_message[kind].append(await run_client(kind, port, count) / count * 1e6)
    finally:
        plain.close()
        await plain.wait_closed()
        await server.stop(0)
    us = {k: round(statistics.median(v), 1) for k, v in per_message.items()}
    return {
        "messages": count,
        "runs": runs,
        "sender_cpu_us_per_message": us,
        "runs_us": {k: [round(x, 1) for x in v] for k, v in per_message.items()},
        "grpc_over_frames": round(us["grpc"] / us["frames"], 2) if us["frames"] else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--client", choices=("grpc", "frames"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client = grpc_client if args.client == "grpc" else frames_client
        asyncio.run(client(args.port, args.messages))
        return 0
    print(json.dumps(asyncio.run(measure(args.messages, args.runs)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
