"""Containers for the image tests, with podman and no registry.

No container registry is reachable from the test machines, so the Debian
base images are made here from Debian's own packages with mmdebstrap, and the
Python packages an image installs come from a wheelhouse made on the host
before the build (pip inside a build cannot reach PyPI: builds run with no
network). The bases are cached in the git-ignored ``.cache/`` folder, the
wheels in ``wheelhouse/`` (git-ignored too), keyed by what they are made from,
so a warm machine makes neither again.

Making a base or the wheelhouse needs the network (Debian's and PyPI's
servers), which the tests' namespace (``tests/isolated``) does not have:
``python tests/containers.py prepare`` (run by ``just image-tools``, part of
``just setup``) makes them; inside the tests ``debian_base`` and ``wheelhouse``
only find them, and raise ``ContainersNotReady`` saying what to run when
missing. Tests that build or run containers carry ``pytest.mark.image``, so
that ``just image-test`` runs them alone.

Every podman call goes through ``podman_command``: this machine needs the runc
runtime, the cgroupfs cgroup manager and explicit open-file and process limits
(podman's defaults exceed what the machine allows). Containers run with
``--network=host``: inside ``tests/isolated`` that is the namespace's
loopback, so their traffic stays there.

    python tests/containers.py prepare            the bases of PREPARED_BASES and the wheelhouse
    python tests/containers.py base [PACKAGE...]  a bookworm base with these packages; prints its name
    python tests/containers.py wheelhouse         the wheelhouse; prints its folder
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
#: Root file systems made by mmdebstrap, as tarballs podman imports.
BASES = CACHE / "bases"
#: Wheels of the bridge's runtime dependencies (and the setuptools that builds
#: the bridge's own wheel), for a build with no network: the Dockerfile
#: installs from them alone when there are any (wheelhouse/README.md).
WHEELHOUSE = REPO / "wheelhouse"

#: The podman this machine can run: runc (crun is not installed with it here)
#: and cgroupfs (no systemd to manage cgroups).
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
#: Open files and processes (threads, for the limit) per container and build
#: step, within what this machine allows (`ulimit -n` is 20000 here; podman's
#: default of 1048576 makes runc fail with "error setting rlimits").
LIMITS = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384")

DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
#: mmdebstrap's `minbase`: Essential and required packages with apt, as
#: Debian's -slim images; enough for a program with no Python, and for the
#: bridge once PYTHON_RUNTIME is added.
VARIANT = "minbase"
#: Kept out of a base, as debian:bookworm-slim does: documentation, manuals, locales.
_SLIM = ("--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
         "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         "--dpkgopt=path-exclude=/usr/share/info/*",
         "--aptopt=APT::Install-Recommends \"false\"",
         "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*")

#: What the Dockerfile's stages install from Debian when their base lacks it
#: (offline, the base must hold it already): the build stage's python3-venv,
#: the runtime's python3, libopus0 (opuslib) and ca-certificates.
PYTHON_RUNTIME = ("python3", "python3-venv", "libopus0", "ca-certificates")
#: The bases `prepare` makes (`just image-tools`), for the tests that use them:
#: the standalone image's (tests/test_image.py) and one with no Python at all
#: (tests/test_dropin.py). A test needing another adds its packages here.
PREPARED_BASES = (PYTHON_RUNTIME, ())


class ContainersNotReady(Exception):
    """podman, a base image or the wheelhouse is missing; the message says what to run."""


def podman_command(*args: str) -> list[str]:
    """The command line of ``podman ARGS`` with this machine's runtime flags."""
    return [*PODMAN, *args]


def podman(*args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` to its end; stdout and stderr captured as text.

    Raises:
        subprocess.CalledProcessError: it failed and ``check`` (its stderr is in the exception).
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    done = subprocess.run(podman_command(*args), input=input, capture_output=True, timeout=timeout)
    result = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                         done.stderr.decode(errors="replace"))
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def ensure_podman() -> None:
    """Return when podman runs containers here.

    Raises:
        ContainersNotReady: podman is not installed or cannot run (`just image-tools` installs it).
    """
    if shutil.which("podman") is None:
        raise ContainersNotReady("podman is not installed: run `just image-tools` (apt: podman, runc, mmdebstrap)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        raise ContainersNotReady(f"podman does not run here: {info.stderr.strip()}")


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False, timeout=60).returncode == 0


def debian_base(packages: Sequence[str] = (), *, make: bool = False) -> str:
    """The name of a Debian bookworm image (mmdebstrap's minbase, slimmed as
    debian:bookworm-slim is) with ``packages`` added, imported into podman.

    It is found in podman's storage, else imported from its tarball in
    ``.cache/bases/``, else, with ``make``, made with mmdebstrap from Debian's
    servers (about a minute; needs the network).

    Raises:
        ContainersNotReady: not made yet and not ``make``; or podman or mmdebstrap is missing.
        subprocess.CalledProcessError: mmdebstrap or podman failed.
    """
    packages = tuple(sorted(set(packages)))
    recipe = json.dumps([DEBIAN_SUITE, VARIANT, DEBIAN_SOURCES, _SLIM, packages])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    image = f"localhost/livekit-bridge-test-base:{DEBIAN_SUITE}-{key}"
    ensure_podman()
    if image_exists(image):
        return image
    tarball = BASES / f"{DEBIAN_SUITE}-{key}.tar"
    if not tarball.exists():
        if not make:
            raise ContainersNotReady(f"the Debian base with {list(packages) or 'no extra packages'} is not made "
                                     f"yet: run `just image-tools` (or `python tests/containers.py base "
                                     f"{' '.join(packages)}`) on a machine with network")
        if shutil.which("mmdebstrap") is None:
            raise ContainersNotReady("mmdebstrap is not installed: run `just image-tools`")
        BASES.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        include = [f"--include={','.join(packages)}"] if packages else []
        subprocess.run(["mmdebstrap", "--quiet", "--format=tar", f"--variant={VARIANT}", *include, *_SLIM, DEBIAN_SUITE,
                        str(partial), *DEBIAN_SOURCES], check=True, timeout=1200)
        partial.rename(tarball)
    podman("import", str(tarball), image, timeout=600)
    return image


def runtime_requirements() -> list[str]:
    """The bridge's own dependencies as pyproject.toml pins them (not the test or bench extras)."""
    with open(REPO / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)
    return list(project["project"]["dependencies"])


def build_requirements() -> list[str]:
    """What builds the bridge's own wheel (pyproject.toml's build-system), pinned there, not by the lock."""
    with open(REPO / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["build-system"]["requires"])


def wheelhouse(*, make: bool = False) -> pathlib.Path:
    """The folder of wheels the Dockerfile installs from with no network
    (``wheelhouse/``): the runtime dependencies at requirements.lock's
    versions, and the build backend. Made again when those pins or
    requirements.lock change.

    Raises:
        ContainersNotReady: missing or stale and not ``make``.
        subprocess.CalledProcessError: pip failed (it needs PyPI).
    """
    key = hashlib.sha256(json.dumps([runtime_requirements(), build_requirements()]).encode()
                         + (REPO / "requirements.lock").read_bytes())
    stamp = WHEELHOUSE / f".made-{key.hexdigest()[:16]}"
    if stamp.exists():
        return WHEELHOUSE
    if not make:
        raise ContainersNotReady("the wheelhouse is missing or older than requirements.lock: run `just image-tools` "
                                 "(or `python tests/containers.py wheelhouse`) on a machine with network")
    for made in [*WHEELHOUSE.glob("*.whl"), *WHEELHOUSE.glob(".made-*")]:
        made.unlink()
    # The host's Python is 3.11 on glibc, as bookworm's: its wheels are the image's.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE)]
    subprocess.run([*pip_wheel, "--constraint", str(REPO / "requirements.lock"), *runtime_requirements()],
                   check=True, timeout=1200)
    subprocess.run([*pip_wheel, *build_requirements()], check=True, timeout=600)
    stamp.touch()
    return WHEELHOUSE


def build_image(tag: str, *, context: pathlib.Path = REPO, dockerfile: str = "Dockerfile",
                build_args: Mapping[str, str] | None = None, timeout: float = 1800) -> str:
    """Build ``dockerfile`` in ``context`` as ``tag``, with no network and no
    pulls (every FROM must be a local image: pass bases as build args). Docker
    format, so HEALTHCHECK and STOPSIGNAL are kept. Returns ``tag``.

    Raises:
        subprocess.CalledProcessError: the build failed (the log is in its stdout and stderr).
    """
    args = [f"--build-arg={name}={value}" for name, value in (build_args or {}).items()]
    podman("build", "--format", "docker", "--network", "none", "--pull=never", *LIMITS, *args,
           "--file", str(context / dockerfile), "--tag", tag, str(context), timeout=timeout)
    return tag


def run_args(image: str, *command: str, name: str | None = None, env: Mapping[str, str] | None = None,
             volumes: Sequence[str] = (), detach: bool = False, remove: bool = True,
             extra: Sequence[str] = ()) -> list[str]:
    """The command line of ``podman run`` on the host's network (the tests'
    loopback), with this machine's limits; ``volumes`` as ``-v`` takes them
    ("HOST:CONTAINER[:OPTIONS]"); ``extra``: more of podman run's options."""
    args = ["run", "--pull=never", "--network=host", *LIMITS]
    if detach:
        args.append("--detach")
    if remove:
        args.append("--rm")
    if name:
        args += ["--name", name]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    return podman_command(*args, *extra, image, *command)


def run(image: str, *command: str, timeout: float = 600, check: bool = True, **options: object
        ) -> subprocess.CompletedProcess[str]:
    """``podman run`` to its end (or, with ``detach=True``, until started:
    stdout is then the container's id); options as ``run_args``."""
    done = subprocess.run(run_args(image, *command, **options), capture_output=True, text=True,  # type: ignore[arg-type]
                          timeout=timeout)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done


def remove_container(name: str) -> None:
    """Stop at once (SIGKILL) and remove a container, if it exists."""
    podman("rm", "--force", "--time", "0", name, check=False, timeout=120)


def image_size(image: str) -> int:
    """The image's size in bytes, as `podman images` counts it (every layer, uncompressed)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image, timeout=60).stdout.strip())


def _main(argv: list[str]) -> int:
    command, *rest = argv or ["prepare"]
    try:
        if command == "prepare":
            for packages in PREPARED_BASES:
                print(debian_base(packages, make=True))
            print(wheelhouse(make=True))
        elif command == "base":
            print(debian_base(rest, make=True))
        elif command == "wheelhouse":
            print(wheelhouse(make=True))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except ContainersNotReady as error:
        print(f"containers: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
