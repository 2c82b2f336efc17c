"""Regenerate the betterproto (grpclib) code from the .proto files.

Usage: python -m proto.generate [OUTPUT_DIR]   (default: this folder)
The generated package is proto/mentra/..., and beside it descriptors.binpb
(a FileDescriptorSet of the same files, which proto.runtime_messages loads
into the protobuf runtime); both are committed, and
tests/test_wire_contract.py fails when they no longer match the .proto files.
"""

from __future__ import annotations

import os
import pathlib
import sys

from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parent
PROTO_FILES = ["livekit_bridge.proto", "bridge_debug.proto"]
DESCRIPTOR_SET = "descriptors.binpb"


def generate(output_dir: pathlib.Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    # protoc finds the betterproto plugin on PATH: put this interpreter's scripts first.
    scripts = str(pathlib.Path(sys.executable).parent)
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_betterproto_out={output_dir}",
            f"--descriptor_set_out={output_dir / DESCRIPTOR_SET}", "--include_imports", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {PROTO_FILES}")


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)
