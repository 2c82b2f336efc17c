#!/usr/bin/env bash
# Build the drop-in bundle of the bridge (deploy/livekit-bridge.spec) into
# build/bundle/livekit-bridge/: the executable `livekit-bridge` beside its
# folder `livekit-bridge.d/`. The cloud image's stage (deploy/Dockerfile.stage)
# and `just bundle` both run this.
#
#   deploy/build_bundle.sh [PYTHON]     (default .venv/bin/python)
#
# PYTHON's environment must hold the bridge's packages at their pins
# (requirements.lock); PyInstaller is installed into it at its pin.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
"$python" -m pip install --quiet --disable-pip-version-check -c requirements.lock pyinstaller pyinstaller-hooks-contrib altgraph
rm -rf build/bundle/livekit-bridge
"$python" -m PyInstaller --noconfirm --log-level WARN --distpath build/bundle --workpath build/pyinstaller \
    deploy/livekit-bridge.spec
echo "built build/bundle/livekit-bridge ($(du -sh build/bundle/livekit-bridge | cut -f1))"
