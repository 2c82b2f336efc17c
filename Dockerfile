# The LiveKit bridge as a standalone image (docs/deploy.md):
#
#   docker build -t livekit-bridge .
#   docker run -v bridge-socket:/run/livekit-bridge --stop-timeout 30 livekit-bridge
#
# By default it serves the Unix socket /run/livekit-bridge/bridge.sock in that
# volume, for a cloud container that mounts it too. For TCP on PORT (9090)
# instead, set BRIDGE_AUTH_TOKEN and an empty LIVEKIT_GRPC_SOCKET: the bridge
# refuses TCP beyond loopback without a token.
#
# Build arguments:
#   BASE_IMAGE  the Debian bookworm image both stages start from. What a stage
#               needs from Debian and the base lacks is installed with apt, so
#               a base that holds it already builds with no network.
# Wheels in wheelhouse/ (wheelhouse/README.md) are installed from alone, with
# no network; with none there, pip installs from PyPI. Either way at the
# versions of requirements.lock.
ARG BASE_IMAGE=debian:bookworm-slim

# pip, in a virtualenv of its own: it installs into the bridge's (--python), which so holds no pip.
FROM ${BASE_IMAGE} AS installer
RUN need=""; for package in python3 python3-venv; do \
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || need="$need $package"; \
    done; \
    if [ -n "$need" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $need && rm -rf /var/lib/apt/lists/*; \
    fi
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/installer \
    && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' >/etc/pip.conf; \
    fi
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies, a layer of their own: rebuilt (and pulled again) only when the pins change.
FROM installer AS dependencies
WORKDIR /src
COPY pyproject.toml requirements.lock ./
RUN python3 -m venv --without-pip /opt/livekit-bridge \
    && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        >/tmp/dependencies.txt \
    && /opt/installer/bin/pip --python /opt/livekit-bridge/bin/python install \
        --constraint requirements.lock --requirement /tmp/dependencies.txt

# The bridge itself, into /layer (its files at their place in the virtualenv): the small layer a release changes.
FROM dependencies AS bridge
COPY bridge_main.py ./
COPY actors/ actors/
COPY proto/ proto/
RUN /opt/installer/bin/pip --python /opt/livekit-bridge/bin/python install --no-deps --root /layer .

FROM ${BASE_IMAGE}
# python3 for the virtualenv, libopus0 for opuslib, ca-certificates for wss:// LiveKit servers;
# the wheels carry every other library they load (FFmpeg, soxr, the LiveKit SDK's core).
RUN need=""; for package in python3 libopus0 ca-certificates; do \
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || need="$need $package"; \
    done; \
    if [ -n "$need" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $need && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --user-group --uid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin livekit-bridge \
    && install -d -o livekit-bridge -g livekit-bridge -m 0770 /run/livekit-bridge
COPY --from=dependencies /opt/livekit-bridge /opt/livekit-bridge
COPY --from=bridge /layer/ /

# The Go bridge's defaults (PORT, LOG_LEVEL), and the socket: the default that
# starts with no secret. An empty LIVEKIT_GRPC_SOCKET serves TCP on PORT.
ENV PATH=/opt/livekit-bridge/bin:$PATH \
    PORT=9090 \
    LOG_LEVEL=info \
    LIVEKIT_GRPC_SOCKET=/run/livekit-bridge/bridge.sock \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME /run/livekit-bridge
USER livekit-bridge
EXPOSE 9090
# grpc.health.v1 Health/Check where the settings above point, with
# BRIDGE_AUTH_TOKEN when set: unhealthy once the bridge drains or stops answering.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["livekit-bridge", "health"]
# SIGTERM drains: health says NOT_SERVING, calls end UNAVAILABLE, every room is
# left, then the process exits 0 (a few seconds; BRIDGE_TEARDOWN_TIMEOUT,
# BRIDGE_DRAIN_GRACE). Give it a stop timeout of 30 s (docker run --stop-timeout,
# compose stop_grace_period): Docker's default 10 s can cut a drain short.
STOPSIGNAL SIGTERM
ENTRYPOINT ["livekit-bridge"]
CMD ["serve"]
