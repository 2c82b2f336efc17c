"""`livekit-bridge health`: ask a running bridge grpc.health.v1.Health/Check
for the whole server, as a container's HEALTHCHECK or a supervisor's probe
does. It reaches the bridge as its settings describe it (``bridge_client``):
run with the bridge's environment, it finds the bridge and carries its token.
"""

from __future__ import annotations

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from .bridge_client import call_bridge
from .settings import BridgeSettings


def health_status(settings: BridgeSettings, *, timeout: float) -> str:
    """The bridge's overall status: "SERVING" while it serves, "NOT_SERVING"
    while it drains (it then stops listening), as Health/Check names them.

    Raises:
        BridgeUnavailable: the bridge could not be reached within ``timeout``
            seconds, or refused the call (UNAUTHENTICATED without its token).
    """
    async def check(channel: Channel, metadata: dict[str, str] | None) -> str:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=timeout, metadata=metadata)
        return HealthCheckResponse.ServingStatus.Name(reply.status)

    return call_bridge(settings, check)
