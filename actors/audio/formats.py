"""Which container a downloaded body holds: from its Content-Type, then its
URL's suffix, then its first bytes."""

from __future__ import annotations

import dataclasses
import posixpath
import struct
import urllib.parse


class UnsupportedAudio(Exception):
    """The body is not audio the bridge can play; the message says what it is."""


#: Container names as PyAV (FFmpeg) knows them.
SUPPORTED = ("wav", "mp3", "ogg", "flac")

_BY_CONTENT_TYPE = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/mpeg3": "mp3", "audio/x-mpeg-3": "mp3",
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/vorbis": "ogg", "application/ogg": "ogg",
    "audio/flac": "flac", "audio/x-flac": "flac",
}
_BY_SUFFIX = {".wav": "wav", ".wave": "wav", ".mp3": "mp3", ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg",
              ".flac": "flac"}
#: Content types that say nothing about the body.
_GENERIC = {"", "application/octet-stream", "binary/octet-stream", "application/binary", "audio/*"}

#: How many leading bytes :func:`detect_container` and :func:`wav_layout`
#: want to see (fewer when the body is shorter).
HEAD_BYTES = 4096


def detect_container(content_type: str, url: str, head: bytes) -> str:
    """The container of a body (one of SUPPORTED).

    Raises:
        UnsupportedAudio: the body is text (an HTML error page, JSON, ...), or
            a type the bridge does not play, or nothing identifies it.
    """
    mime = content_type.split(";", 1)[0].strip().lower()
    sniffed = _sniff(head)
    if sniffed == "text" or mime.startswith("text/") or mime in ("application/json", "application/xml"):
        raise UnsupportedAudio(
            f"the server sent {mime or 'text'}, not audio (first bytes: {head[:16]!r})")
    if mime in _BY_CONTENT_TYPE:
        return _BY_CONTENT_TYPE[mime]
    suffix = posixpath.splitext(urllib.parse.urlsplit(url).path)[1].lower()
    if suffix in _BY_SUFFIX and mime in _GENERIC:
        return _BY_SUFFIX[suffix]
    if sniffed is not None:
        return sniffed
    if mime not in _GENERIC:
        raise UnsupportedAudio(f"the server sent {mime}, which the bridge does not play "
                               f"(it plays WAV, MP3, Ogg Opus, Ogg Vorbis and FLAC)")
    raise UnsupportedAudio("the body is not audio the bridge recognises "
                           "(it plays WAV, MP3, Ogg Opus, Ogg Vorbis and FLAC)")


def _sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head.lstrip()[:1] in (b"<", b"{"):
        return "text"
    return None


@dataclasses.dataclass(frozen=True)
class WavLayout:
    """Where a PCM WAV file's samples are and what they are, from its header.

    FFmpeg's WAV demuxer reads 64 KiB ahead before its first frame (to look
    for S/PDIF data in the PCM), seconds of audio from a server that streams
    as it synthesises; its raw PCM demuxer, pointed at the data chunk, needs
    one packet.
    """

    data_offset: int
    #: None for a streaming WAV, whose writer could not know the length.
    data_bytes: int | None
    #: FFmpeg's raw PCM demuxer: u8, s16le, s24le, s32le, f32le or f64le.
    raw_format: str
    sample_rate: int
    channels: int
    block_align: int

    @property
    def declared_seconds(self) -> float | None:
        if self.data_bytes is None:
            return None
        return self.data_bytes / (self.sample_rate * self.block_align)


_PCM_FORMATS = {(1, 8): "u8", (1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le",
                (3, 64): "f64le"}
_EXTENSIBLE = 0xFFFE


def wav_layout(head: bytes) -> WavLayout | None:
    """The layout of a PCM or float WAV file whose head reaches its data
    chunk; None for anything else (left to FFmpeg's WAV demuxer)."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int, int] | None = None  # tag, channels, rate, block align, bits
    offset = 12
    while offset + 8 <= len(head):
        name, size = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if name == b"fmt " and body + 16 <= len(head):
            tag, channels, rate, _byte_rate, block, bits = struct.unpack_from("<HHIIHH", head, body)
            if tag == _EXTENSIBLE and size >= 40 and body + 26 <= len(head):
                tag = struct.unpack_from("<H", head, body + 24)[0]  # the sub-format GUID starts with the tag
            fmt = (tag, channels, rate, block, bits)
        elif name == b"data":
            if fmt is None:
                return None
            tag, channels, rate, block, bits = fmt
            raw = _PCM_FORMATS.get((tag, bits))
            if raw is None or channels < 1 or rate < 1 or block != channels * bits // 8:
                return None
            return WavLayout(body, None if size in (0, 0xFFFFFFFF) else size, raw, rate, channels, block)
        offset = body + size + (size & 1)  # chunks are padded to even sizes
    return None
