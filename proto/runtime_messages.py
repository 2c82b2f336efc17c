"""The audio path's message, AudioChunk, on the protobuf runtime.

betterproto encodes and decodes in Python (70-100 us for a 100 ms chunk); the
protobuf runtime does it in C (upb, about 1 us) and refuses malformed input
(bad wire types, truncated fields, invalid UTF-8 in strings) exactly as every
other protobuf implementation does. The class is built from
descriptors.binpb, which `just proto` writes from the same .proto files as the
betterproto code, so both speak the same contract. Its fields have the same
names as betterproto's AudioChunk.
"""

from __future__ import annotations

import pathlib

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_DESCRIPTOR_SET = pathlib.Path(__file__).with_name("descriptors.binpb")

#: The .proto files as FileDescriptorProtos (for server reflection too).
DESCRIPTOR_SET_FILES = list(descriptor_pb2.FileDescriptorSet.FromString(_DESCRIPTOR_SET.read_bytes()).file)

_pool = descriptor_pool.DescriptorPool()
for _file in DESCRIPTOR_SET_FILES:
    _pool.Add(_file)

#: mentra.livekit.bridge.AudioChunk, on the protobuf runtime.
AudioChunk = message_factory.GetMessageClass(_pool.FindMessageTypeByName("mentra.livekit.bridge.AudioChunk"))
