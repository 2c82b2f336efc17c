"""Which container a downloaded body holds: from its Content-Type, then its
URL's suffix, then its first bytes."""

from __future__ import annotations

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

#: How many leading bytes :func:`detect_container` and :func:`declared_seconds`
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


def declared_seconds(container: str, head: bytes) -> float | None:
    """How long a WAV file's header says its audio is, or None when the head
    does not say (another container, a streaming WAV whose writer could not
    know its length, or a header longer than the head).

    A non-seekable stream hides this from FFmpeg, and it is what tells a cut-off
    file from a complete one, and a file over the duration cap before it plays.
    """
    if container != "wav" or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    byte_rate = None
    offset = 12
    while offset + 8 <= len(head):
        name, size = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if name == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        elif name == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None
