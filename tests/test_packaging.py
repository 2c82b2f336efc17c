"""The wheel holds the whole bridge, and its `livekit-bridge` command runs
from a virtualenv installed from that wheel alone (the project's editable
install hides a package missing from the wheel's list; an image would not)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
#: What is copied to build from: the tree without what builds leave behind
#: (a stale build/ would put files in the wheel that its package list lacks).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".cache", ".tools", "node_modules", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", "results", "demo-output", "wheelhouse")
SHIPPED = ("actors", "proto")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    source = tmp_path_factory.mktemp("source") / "tree"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the tests run with no network, and the project's
    # virtualenv holds setuptools (the image's build uses the pinned one).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, timeout=300)
    [built] = out.glob("livekit_bridge-*.whl")
    return built


def source_files() -> set[str]:
    """Every file of the shipped packages (code and data), as wheel paths, and bridge_main.py."""
    files = {"bridge_main.py"}
    for top in SHIPPED:
        for path in (REPO / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(REPO).as_posix())
    return files


def test_the_wheel_holds_every_file_of_the_packages(wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"the wheel lacks {missing}: see [tool.setuptools] in pyproject.toml"
    packages = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    assert {"actors/sdk_workers", "proto/mentra/livekit/bridge/debug"} <= packages
    [entry_points_file] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    entry_points = zipfile.ZipFile(wheel).read(entry_points_file)
    assert b"livekit-bridge = bridge_main:main" in entry_points


def test_the_command_runs_from_a_virtualenv_of_the_wheel(wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    # The dependencies come from the project's virtualenv, added as a plain path:
    # its .pth files (the editable install's finder among them) are not run.
    site = pathlib.Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig."
                                        "get_path('purelib'))"], check=True, capture_output=True,
                                       text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    help_text = subprocess.run([venv / "bin" / "livekit-bridge", "--help"], capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert help_text.stdout.startswith("usage: livekit-bridge [serve|dev|tree|health]")

    # Every module imports, from the wheel's files (none from the source tree).
    modules = sorted(path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                     for path in source_files() if path.endswith(".py"))
    check = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    module = importlib.import_module(name)\n"
             "    assert module.__file__.startswith(sys.prefix), (name, module.__file__)\n"
             "print(len(sys.argv) - 1)\n")
    imported = subprocess.run([venv / "bin" / "python", "-I", "-c", check, *modules], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert int(imported.stdout) == len(modules) > 50

    # The health probe runs too, and says that nothing listens.
    probe = subprocess.run([venv / "bin" / "livekit-bridge", "health", "--timeout", "2"], capture_output=True,
                           text=True, env=dict(env, LIVEKIT_GRPC_SOCKET=str(tmp_path / "none.sock")),
                           cwd=tmp_path, timeout=60)
    assert probe.returncode == 1 and "cannot reach the bridge at unix:" in probe.stderr, probe
