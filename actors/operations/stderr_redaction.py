"""What a process hosting the livekit SDK writes on its fd 2 passes through
a redactor before it reaches the real stderr: no JoinRoom token gets out.

Why: the SDK's Rust core logs with env_logger straight to fd 2 (its log
forwarding to Python is off: actors/livekit/sdk_core.py), and when LiveKit
refuses a token its lines quote it whole ("401 Unauthorized - invalid
token: eyJ..."). Those lines never pass through the bridge's loguru, so
its Redactor never sees them. Turning the forwarding back on to redact them
in Python would cost every record of the core's log (25 against 14 ms of CPU
per session-second), where a pipe costs only the lines the core writes at
RUST_LOG's level: at ``warn`` (the default) none while rooms are well, at
``info`` a few per join and leave.

The contract:

- Every byte written to the filtered fd 2 reaches the real stderr with
  anything of a JWT's shape replaced by REDACTED (log_records.JWT_SHAPED: a
  whole token, its payload or its payload and signature), or is dropped;
  never unredacted. Lines are redacted whole, so a token split across two
  writes is still found; a line longer than MAX_LINE is let out in parts
  cut between characters a token cannot hold (never inside a token).
- The relay never blocks the writer forever, and holds a bounded amount: it
  reads whatever comes (the pipe holds PIPE_BYTES meanwhile), and when the
  real stderr takes nothing for WRITE_PATIENCE seconds it drops what it read
  and says so on the next line it can write. So the SDK's threads wait on
  their log only while the relay redacts, never on a stuck stderr.
- Nothing is lost at an exit: the relay reads its pipe until every writer
  has closed it (EOF), writes what is left, then ends.

Where the relay runs decides what a crash leaves. A Rust panic that aborts,
or a fatal libwebrtc check, writes its last lines to fd 2 just before the
process dies; a relay thread inside the dying process dies with it, and what
was in the pipe is lost. So for an SDK worker process (the default) the
relay runs in the bridge, the worker's parent (:func:`open_child_stderr`):
it reads the worker's pipe to EOF after the worker is gone, its last words
included. With the SDK in the bridge's own process (BRIDGE_SDK_WORKERS=0) the
relay can only be a thread of that process (:func:`filter_own_stderr`): a
helper process would not help in a container, where the bridge is PID 1 and
its death kills every other process at once. There, the lines of an abort
may be lost, never leaked.

The process's own log lines (loguru: redacted already when JSON) do not take
the extra hop: the bridge's go to the real stderr (:func:`filter_own_stderr`
returns a stream on it), a worker's to the bridge's stderr passed at LOG_FD
(actors/sdk_workers/own_group_process.py). Python's own writes to fd 2
(``sys.stderr``: tracebacks, warnings) go through the redactor.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import select
import sys
import threading
import time
from typing import TextIO

from .log_records import JWT_SHAPED, REDACTED

#: What the pipe holds while the relay is busy (the kernel's default is 64 KiB).
PIPE_BYTES = 256 * 1024
#: The most the relay takes from the pipe at once.
READ_BYTES = 64 * 1024
#: An unfinished line longer than this is let out in parts.
MAX_LINE = 64 * 1024
#: How long the relay waits for the real stderr to take a read's worth before dropping it.
WRITE_PATIENCE = 1.0
#: How long an exit waits for the relay to write what is left.
DRAIN_SECONDS = 2.0
#: Writes of at most this many bytes are not interleaved with others' on a pipe (POSIX's PIPE_BUF).
ATOMIC_WRITE = 4096

_SHAPED = re.compile(JWT_SHAPED.encode("ascii"))
_MARKER = REDACTED.encode("ascii")
#: A byte that no token holds, and the last one of a line: an overlong line may be cut after one.
_OUTSIDE_TOKENS = re.compile(rb"[^A-Za-z0-9_.-]")
_LAST_OUTSIDE_TOKENS = re.compile(rb"[^A-Za-z0-9_.-][A-Za-z0-9_.-]*\Z")


def redact(data: bytes) -> bytes:
    """``data`` with everything of a JWT's shape replaced by REDACTED."""
    return _SHAPED.sub(_MARKER, data) if data else data


class LineRedactor:
    """Redacts a byte stream a whole line at a time (see the module's docstring)."""

    def __init__(self) -> None:
        self._unfinished = b""
        #: A run of token characters longer than MAX_LINE was dropped: the rest of it is dropped too.
        self._in_overlong_run = False

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can be let out, redacted."""
        if self._in_overlong_run:
            outside = _OUTSIDE_TOKENS.search(data)
            if outside is None:
                return b""
            data, self._in_overlong_run = data[outside.start():], False
        data = self._unfinished + data
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > MAX_LINE:  # an unfinished line too long to hold: out up to its last non-token byte
            last = _LAST_OUTSIDE_TOKENS.search(data, cut)
            if last is None:  # all of it one run of token characters: dropped
                self._unfinished, self._in_overlong_run = b"", True
                return redact(data[:cut]) + _MARKER
            cut = last.start() + 1
        self._unfinished = data[cut:]
        return redact(data[:cut])

    def flush(self) -> bytes:
        """The unfinished line, redacted (at the stream's end)."""
        rest, self._unfinished = self._unfinished, b""
        return redact(rest)


class StderrRelay(threading.Thread):
    """Copies what is written into a pipe, redacted, to ``out`` until every
    writer has closed the pipe (see the module's docstring); then it closes
    its end of the pipe and ends. A daemon thread: it holds up no exit, and
    an exit that wants the last lines waits for it (``join``)."""

    def __init__(self, pipe: int, out: int, name: str) -> None:
        super().__init__(name=f"stderr relay ({name})", daemon=True)
        self._pipe = pipe
        self._out = out
        self._redactor = LineRedactor()
        self._out_ready = select.poll()
        self._out_ready.register(out, select.POLLOUT)
        #: Bytes read but not written (the real stderr did not take them): said once writing works again.
        self.dropped = 0

    def run(self) -> None:
        try:
            while data := os.read(self._pipe, READ_BYTES):
                try:
                    self._write(self._redactor.feed(data))
                except Exception:  # (a fault here must not stop the reading: the writers would block for good)
                    self.dropped += len(data)
            self._write(self._redactor.flush())
        finally:
            os.close(self._pipe)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        notice = b""
        if self.dropped:
            notice = (f"[stderr relay: {self.dropped} bytes of the log dropped, stderr took nothing for "
                      f"{WRITE_PATIENCE:g} s]\n").encode()
            data = notice + data
        # (While it drops, a stderr still stuck costs no wait: the pipe is read on at once.)
        deadline = time.monotonic() + (0.0 if self.dropped else WRITE_PATIENCE)
        for start, end in _atomic_pieces(data):
            while start < end:
                left = deadline - time.monotonic()
                try:
                    if not self._out_ready.poll(max(left, 0.0) * 1000):
                        raise BlockingIOError
                    start += os.write(self._out, memoryview(data)[start:end])
                except InterruptedError:
                    continue
                except OSError:  # stuck, or gone (closed, EPIPE): dropped, so the pipe is read on
                    self.dropped += len(data) - max(start, len(notice))
                    return
        self.dropped = 0


def _atomic_pieces(data: bytes) -> list[tuple[int, int]]:
    """``data`` cut after newlines into pieces of at most ATOMIC_WRITE bytes
    (a longer line is one piece), so that other writers' lines (the bridge's
    own, on the same stderr) fall between lines, not inside one."""
    pieces, start = [], 0
    while len(data) - start > ATOMIC_WRITE:
        cut = data.rfind(b"\n", start, start + ATOMIC_WRITE) + 1
        if cut <= start:
            cut = data.find(b"\n", start + ATOMIC_WRITE) + 1 or len(data)
        pieces.append((start, cut))
        start = cut
    if start < len(data):
        pieces.append((start, len(data)))
    return pieces


def _redacting_pipe() -> tuple[int, int]:
    """A pipe (read end, write end), both close-on-exec, holding PIPE_BYTES."""
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # (over /proc/sys/fs/pipe-max-size, or the user's pipe quota: the default size)
        pass
    return read, write


def open_child_stderr(name: str, out: int = 2) -> tuple[int, StderrRelay]:
    """A pipe for a child process's fd 2, and the relay (started) that
    copies it, redacted, to ``out`` (this process's fd 2). The caller passes
    the write end to the child and closes it at once, then ``join``s the
    relay after the child exits: it ends once the child's last lines are out.

    Raises:
        OSError: no pipe (out of descriptors).
    """
    read, write = _redacting_pipe()
    relay = StderrRelay(read, out, name)
    relay.start()
    return write, relay


def filter_own_stderr() -> TextIO:
    """Route this process's fd 2 through a relay thread; return a stream on
    the real stderr for the process's own log lines (loguru's sink), which
    need not take the hop. At exit (atexit) the relay writes what is left,
    and fd 2 is pointed at /dev/null: what the interpreter's last moments
    write there is discarded, never written unredacted.

    Raises:
        OSError: no pipe (out of descriptors).
    """
    sys.stderr.flush()
    real = os.dup(2)
    read, write = _redacting_pipe()
    relay = StderrRelay(read, real, "this process")
    os.dup2(write, 2)
    os.close(write)
    relay.start()

    def drain() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # the pipe's last writer closed: the relay reads to EOF
        os.close(devnull)
        relay.join(DRAIN_SECONDS)

    atexit.register(drain)
    return log_stream(os.dup(real))


def log_stream(fd: int) -> TextIO:
    """A text stream on ``fd`` (which it owns) for this process's own log
    lines, written as sys.stderr writes them.

    Raises:
        OSError: ``fd`` is not open.
    """
    return open(fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
