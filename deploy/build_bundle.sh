#!/usr/bin/env bash
# Build the drop-in bundle of the bridge (deploy/livekit-bridge.spec) into
# build/bundle/livekit-bridge/: the executable `livekit-bridge` beside its
# folder `livekit-bridge.d/`. The cloud image's stage (deploy/Dockerfile.stage)
# and `just bundle` both run this.
#
#   deploy/build_bundle.sh [PYTHON]     (default .venv/bin/python)
#
# PYTHON's environment must hold the bridge's packages at their pins
# (requirements.lock); PyInstaller is installed into it at its pin, and
# binutils from apt when objdump is missing. A bundle built from the same
# sources (the bridge's code, the lock, this folder) is kept, not built again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
sources=$(find actors proto deploy bridge_main.py pyproject.toml requirements.lock -type f -not -path "*/__pycache__/*" \
    -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
stamp=build/bundle/livekit-bridge.sources-$sources  # beside the bundle: not copied into images with it
if [ -f "$stamp" ] && [ -x build/bundle/livekit-bridge/livekit-bridge ]; then
    echo "build/bundle/livekit-bridge is up to date"
    exit 0
fi
if ! command -v objdump >/dev/null; then  # PyInstaller reads shared libraries with it
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends binutils >/dev/null
fi
"$python" -m pip install --quiet --disable-pip-version-check -c requirements.lock pyinstaller pyinstaller-hooks-contrib altgraph
rm -rf build/bundle/livekit-bridge build/bundle/livekit-bridge.sources-*
"$python" -m PyInstaller --noconfirm --log-level WARN --distpath build/bundle --workpath build/pyinstaller \
    deploy/livekit-bridge.spec
# The interpreter's library may carry debug symbols (pyenv's: 22 MB, 6 MB without). Only it is
# stripped: the wheels' libraries were patched by auditwheel, and strip breaks them (numpy's OpenBLAS).
strip --strip-unneeded build/bundle/livekit-bridge/livekit-bridge.d/libpython3*.so*
touch "$stamp"
echo "built build/bundle/livekit-bridge ($(du -sh build/bundle/livekit-bridge | cut -f1))"
