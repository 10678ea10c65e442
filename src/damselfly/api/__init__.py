"""The protocol edge: Dragonfly v2 protobuf messages in, domain types out.

Only this package and the gRPC service modules (``scheduler/service.py``,
``daemon/service.py``, ``daemon/scheduler_client.py``) touch protobuf types.
"""

from dragonfly_api import (
    common_pb2,
    dfdaemon_pb2,
    dfdaemon_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

__all__ = ["common_pb2", "dfdaemon_pb2", "dfdaemon_pb2_grpc", "scheduler_pb2", "scheduler_pb2_grpc"]
