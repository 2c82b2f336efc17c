# LiveKit bridge. Prerequisites on a fresh machine: Python 3.11+, pip, Go, and
# `just` (pip install rust-just). Everything else is installed by the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := ".venv/bin/python"
livekit_version := "1.13.5"
livekit_server := ".tools/bin/livekit-server"
grpcurl_version := "1.9.4"
grpcurl := ".tools/bin/grpcurl"

# (Only the bridge when LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET name a server. Args: the
# bridge's flags, e.g. --port 9091; `.venv/bin/python bridge_main.py --help` lists them.)
# The main job: a local LiveKit dev server plus the bridge.
run *args: setup
    {{python}} bridge_main.py dev {{args}}

# (It runs in a network namespace whose only addresses are loopback: tests/isolated.)
# Install what is missing, then run the whole suite.
test *args: setup test-tools
    tests/isolated {{python}} -m pytest {{args}}

# (Args: --quick for a 2-minute smoke run; --help for the rest. Results: bench/results/.)
# Benchmarks: the load ladder beside the SDK's floor, join/replace/leave, PlayAudio to first sound.
bench *args: setup test-tools
    tests/isolated {{python}} -m bench {{args}}

# (Args: --out DIR, --sentence TEXT, --reply TEXT. Files: demo-output/<time>/.)
# Watch audio go through: a phone speaks to the cloud, the cloud answers through PlayAudio; prints the tree and latency.
demo *args: setup
    {{python}} tests/demo.py {{args}}

# (Args: --json, --watch [SECONDS], --user ID. Reaches the bridge on PORT or LIVEKIT_GRPC_SOCKET.)
# The live actor tree of a running bridge.
tree *args: venv
    {{python}} bridge_main.py tree {{args}}

# (Args: --seed N to replay, --users, --seconds, --rounds; a short run is part of `just test`.)
# The chaos suite: 20 users, 5 minutes of random faults, then the invariants as a table.
chaos *args: setup
    tests/isolated {{python}} tests/chaos_run.py {{args}}

# Regenerate proto/mentra/** from proto/*.proto.
proto: venv
    {{python}} -m proto.generate

# What the bridge needs to run: the virtualenv, Debian's packages, livekit-server.
setup: venv system-packages livekit-server

# What the tests and the bench need besides: grpcurl, the cloud's grpc-js client, podman and its bases, the drop-in bundle, Redis.
test-tools: grpcurl node-client image-tools bundle redis

# (Also part of `just test`; args as pytest's.)
# The image tests alone: those marked `image` (pytest.mark.image), which build and run containers with podman.
image-test *args: venv system-packages livekit-server node-client image-tools bundle
    tests/isolated {{python}} -m pytest -m image {{args}}

# (The tests' LiveKit cluster shares it: tests/livekit_cluster.py starts it on loopback, without persistence.)
# Redis from Debian, for the tests' and the bench's 3-node LiveKit cluster.
redis:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server (needs root or sudo)"
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
    fi

# (Kept while its sources are unchanged; the cloud image's stage, deploy/Dockerfile.stage, runs the same script.)
# The drop-in for the cloud's image: the bridge frozen by PyInstaller into build/bundle/livekit-bridge/.
bundle: venv
    deploy/build_bundle.sh {{python}}

# The virtualenv with exactly the locked packages (requirements.lock), refreshed when it or pyproject.toml changes.
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
    if [ ! -f "$stamp" ]; then
        python3 -m venv .venv
        # (python -m pip: a copied virtualenv's bin/pip may still name the original's python)
        {{python}} -m pip install --quiet --upgrade pip
        {{python}} -m pip install --quiet -r requirements.lock
        {{python}} -m pip install --quiet --no-deps -e .
        rm -f .venv/.installed-* && touch "$stamp"
    fi

# Re-resolve requirements.lock from pyproject.toml (after changing a pin there), with uv.
lock: venv
    {{python}} -m pip install --quiet uv==0.13.9
    {{python}} -m uv pip compile pyproject.toml --extra test --extra bench --extra deploy --python-version 3.11 -o requirements.lock

# (iproute2 sets up the tests' loopback-only network namespace; espeak-ng speaks in `just demo` and its test.)
# From Debian: libopus (which opuslib loads), iproute2 and espeak-ng.
system-packages: venv
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    {{python}} -c "import opuslib" 2>/dev/null || missing+=(libopus0)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (needs root or sudo)"
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
        {{python}} -c "import opuslib"
    fi

# livekit-server from the Go module proxy, into the git-ignored .tools folder.
livekit-server:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! {{livekit_server}} --version 2>/dev/null | grep -q "{{livekit_version}}"; then
        echo "building livekit-server {{livekit_version}} with go install (a few minutes the first time)"
        tmp=$(mktemp -d)
        GOBIN=$tmp go install github.com/livekit/livekit-server/cmd/server@v{{livekit_version}}
        mkdir -p .tools/bin && mv "$tmp/server" {{livekit_server}} && rmdir "$tmp"
    fi

# grpcurl from the Go module proxy, for the tests of health and reflection (tests/test_standard_services.py).
grpcurl:
    #!/usr/bin/env bash
    set -euo pipefail
    # (go install builds report "dev build", not their version: a stamp file says which it is.)
    if [ ! -x {{grpcurl}} ] || [ ! -f {{grpcurl}}-{{grpcurl_version}}.built ]; then
        echo "building grpcurl {{grpcurl_version}} with go install"
        tmp=$(mktemp -d)
        GOBIN=$tmp go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v{{grpcurl_version}}
        mkdir -p .tools/bin && mv "$tmp/grpcurl" {{grpcurl}} && rmdir "$tmp"
        rm -f {{grpcurl}}-*.built && touch {{grpcurl}}-{{grpcurl_version}}.built
    fi

# (Node.js and npm from Debian when missing: the tests that use it never skip.)
# The cloud's own gRPC client stack (@grpc/grpc-js), for tests/test_node_cloud.py and the bench.
node-client:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (needs root or sudo)"
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    cd tests/node_cloud
    if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
        npm ci --silent --no-audit --no-fund
    fi

# (The bases go to the git-ignored .cache/bases/, the wheels to wheelhouse/; both are reused until their recipe changes.)
# For the image tests: podman, runc and mmdebstrap from Debian; Debian bases made with mmdebstrap; the wheelhouse.
image-tools: venv
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (needs root or sudo)"
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    {{python}} tests/containers.py prepare >/dev/null
