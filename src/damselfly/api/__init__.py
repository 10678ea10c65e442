"""The protocol edge: Dragonfly v2 protobuf messages in, domain types out.

Protobuf types appear only in this package (:mod:`.convert` translates) and in
the modules whose job is an RPC edge: servicers and clients, named
``*service``, ``*rpc``, ``*client`` or ``app``, and the ``cli`` and ``testbed``
packages.
"""

import importlib
from typing import Any

from dragonfly_api import common_pb2, dfdaemon_pb2, scheduler_pb2

__all__ = ["common_pb2", "dfdaemon_pb2", "dfdaemon_pb2_grpc", "scheduler_pb2", "scheduler_pb2_grpc"]

_STUBS = ("dfdaemon_pb2_grpc", "scheduler_pb2_grpc")


def __getattr__(name: str) -> Any:  # Any: the stub modules carry no types (grpc has none)
    """The gRPC stub modules, imported when first asked for: they import grpcio, which a
    process that only builds messages (dfget) does not need."""
    if name in _STUBS:
        module = importlib.import_module(f"dragonfly_api.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
