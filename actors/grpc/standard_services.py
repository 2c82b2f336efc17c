"""The standard gRPC services served beside the bridge's own, so that generic
tools work against it: grpc.health.v1 Health (Check and Watch; what load
balancers and Kubernetes probe) and server reflection (what grpcurl lists,
describes and calls with).

Reflection needs real protobuf descriptors; betterproto classes register none,
so they come from proto/descriptors.binpb (written by `just proto`), plus the
health service's own. grpclib's reflection finds a symbol with protobuf's
pool, which knows no methods (``describe pkg.Service.Method`` would be "Symbol
not found"); the bridge's answers every symbol grpc-go's does.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.health.v1 import health_pb2
from google.protobuf.descriptor import FileDescriptor
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
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


def file_containing_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> FileDescriptor:
    """The file that declares ``symbol``: a service, method, message, field,
    oneof, enum, enum value, nested type or extension, as grpc-go's
    reflection answers. An enum value is found by protobuf's name (beside its
    enum: ``pkg.Message.VALUE``) and by the one grpcurl prints
    (``pkg.Message.Enum.VALUE``).

    protobuf's pool (upb) finds all of them but methods, oneofs and the
    second name of an enum value, which are looked up in their service,
    message or enum here.

    Raises:
        KeyError: no file of ``pool`` declares ``symbol``.
    """
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        parent_name, _, member = symbol.rpartition(".")
        for find, members in ((pool.FindServiceByName, "methods_by_name"),
                              (pool.FindMessageTypeByName, "oneofs_by_name"),
                              (pool.FindEnumTypeByName, "values_by_name")):
            try:
                parent = find(parent_name)
            except KeyError:
                continue
            if member in getattr(parent, members):
                return parent.file
        raise


def with_dependencies(file: FileDescriptor) -> list[FileDescriptor]:
    """``file`` first, then every file it imports, transitively, each once
    (grpc-go answers a file with its dependencies)."""
    files = [file]
    for each in files:
        files.extend(dependency for dependency in each.dependencies if dependency not in files)
    return files


class _EverySymbol:
    """grpclib's reflection (v1 or v1alpha), answering file_containing_symbol
    for every kind of symbol and every answered file with its dependencies."""

    _pool: descriptor_pool.DescriptorPool

    def _file_containing_symbol_response(self, symbol: str) -> Any:
        try:
            file = file_containing_symbol(self._pool, symbol)
        except KeyError:
            return self._not_found_response()
        return self._file_descriptor_response(file)

    def _file_descriptor_response(self, file: FileDescriptor) -> Any:
        answer_one = super()._file_descriptor_response  # (not callable as super() inside the comprehension)
        answers = [answer_one(each) for each in with_dependencies(file)]
        for more in answers[1:]:
            answers[0].file_descriptor_response.file_descriptor_proto.extend(
                more.file_descriptor_response.file_descriptor_proto)
        return answers[0]


class _Reflection(_EverySymbol, ServerReflection):
    pass


class _ReflectionV1Alpha(_EverySymbol, ServerReflectionV1Alpha):
    pass


def with_standard_services(handlers: list[Any], readiness: ServiceStatus) -> list[Any]:
    """``handlers`` plus Health and server reflection for all their services.

    Health answers for "" (the whole server) and for each service: SERVING
    while ``readiness`` is set True, NOT_SERVING once it is set False (the
    bridge drains), UNKNOWN before it is set.
    """
    names = service_names(handlers)
    health = Health({OVERALL: [readiness], **{_ServiceName(name): [readiness] for name in names}})
    served = handlers + [health]
    listed = service_names(served) + REFLECTION_SERVICES
    pool = _reflection_pool()
    reflection = [kind(_service_names=listed, _pool=pool) for kind in (_Reflection, _ReflectionV1Alpha)]
    assert service_names(reflection) == REFLECTION_SERVICES, "grpclib's reflection services changed"
    return served + reflection
