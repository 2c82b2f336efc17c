"""The standard gRPC services served beside the bridge's own, so that generic
tools work against it: grpc.health.v1 Health (Check and Watch; what load
balancers and Kubernetes probe) and server reflection (what grpcurl lists,
describes and calls with).

Reflection needs real protobuf descriptors; betterproto classes register none,
so they come from proto/descriptors.binpb (written by `just proto`), plus the
health service's own.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from proto.runtime_messages import DESCRIPTOR_SET_FILES


#: The services of server reflection, which list themselves too.
REFLECTION_SERVICES = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]


class _ServiceName:
    """Stands for one service in grpclib's health and reflection setup, which
    take the service's name from the first path of its mapping."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __mapping__(self) -> dict[str, Any]:
        return {f"/{self.name}/_": None}


def service_names(handlers: list[Any]) -> list[str]:
    """The distinct services of the handlers' method paths ("/package.Service/Method"), in order."""
    names: list[str] = []
    for handler in handlers:
        for path in handler.__mapping__():
            name = path.split("/")[1]
            if name not in names:
                names.append(name)
    return names


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in DESCRIPTOR_SET_FILES:
        pool.Add(file)
    for served_by_grpclib in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        pool.AddSerializedFile(served_by_grpclib.DESCRIPTOR.serialized_pb)
    return pool


def with_standard_services(handlers: list[Any], readiness: ServiceStatus) -> list[Any]:
    """``handlers`` plus Health and server reflection for all their services.

    Health answers for "" (the whole server) and for each service: SERVING
    while ``readiness`` is set True, NOT_SERVING once it is set False (the
    bridge drains), UNKNOWN before it is set.
    """
    names = service_names(handlers)
    health = Health({OVERALL: [readiness], **{_ServiceName(name): [readiness] for name in names}})
    served = handlers + [health]
    named = [_ServiceName(name) for name in service_names(served) + REFLECTION_SERVICES]
    reflection = ServerReflection.extend(named, pool=_reflection_pool())[len(named):]
    assert service_names(reflection) == REFLECTION_SERVICES, "grpclib's reflection services changed"
    return served + reflection
