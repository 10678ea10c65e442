"""The health service's lifecycle: SERVING once started, NOT_SERVING for good once stopping."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from damselfly.api.health import DAMSELFLY_EXTENSIONS, DFDAEMON_UPLOAD, Health

Status = health_pb2.HealthCheckResponse


async def _status(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


async def test_serving_after_start_and_not_serving_once_stopping() -> None:
    server = grpc.aio.server()
    health = Health(server, [DFDAEMON_UPLOAD])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await health.serving()
            assert await _status(stub, "") == Status.SERVING
            assert await _status(stub, DFDAEMON_UPLOAD) == Status.SERVING
            await health.stopping()
            assert await _status(stub, "") == Status.NOT_SERVING
            assert await _status(stub, DFDAEMON_UPLOAD) == Status.NOT_SERVING
            await health.serving()  # too late: a stopping server never comes back
            assert await _status(stub, "") == Status.NOT_SERVING
    finally:
        await server.stop(None)


async def test_a_server_without_extensions_does_not_claim_them() -> None:
    without = grpc.aio.server()
    health = Health(without, [DFDAEMON_UPLOAD], extensions=False)
    port = without.add_insecure_port("127.0.0.1:0")
    await without.start()
    try:
        await health.serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _status(stub, DFDAEMON_UPLOAD) == Status.SERVING
            try:
                await _status(stub, DAMSELFLY_EXTENSIONS)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("a daemon with wire.extensions off claimed Damselfly's extensions")
    finally:
        await without.stop(None)
