"""Settings of the livekit SDK's Rust core (its FFI) that keep the audio of
connected rooms flowing while other rooms connect.

Measured with the load ladder (bench/ladder.py), 50 users streaming while 50
more join, 2 connects in flight (BRIDGE_MAX_CONCURRENT_CONNECTS):

- Log forwarding. The SDK starts its core with log capture on: every record,
  down to TRACE and including libwebrtc's verbose log, becomes one callback
  into Python that takes the GIL, is parsed and, unless it is a warning or
  worse, thrown away: about 3,000 records a second from 10 idle rooms, 6,000
  during a connect burst of 10. Turned off, the core logs with env_logger on
  stderr at RUST_LOG's level (default here: warn). CPU per session-second at
  N=10 went from 25 to 14 ms; the streaming users' p99 during a storm of 10
  from 310 to 107 ms (20 ms packets). Its lines then never pass through the
  bridge's loguru, and when LiveKit refuses a token they quote it whole: so
  the fd 2 of every process hosting the core leads through a redactor
  (actors/operations/stderr_redaction.py; set up by the process's entry
  point: bridge_main.py with the SDK in process, worker.py for a worker),
  which costs only the lines the core writes at that level.
- Tokio workers. The core's tokio runtime has one worker per core (two
  here), and a connect blocks workers in synchronous libwebrtc calls that
  wait for its single signaling thread, so packets of other rooms wait for a
  free worker. With 4 workers the streaming users' p99 during the storm went
  from 252 to 113 ms, and the storm finished in 5.2 s instead of 6.3.

Both reach into the SDK (FfiClient and the C entry point
livekit_ffi_initialize, which may be called again to change its settings),
so the livekit version is pinned; tests/test_load_shaping.py checks that no
log record is forwarded.
"""

from __future__ import annotations

import os

from livekit.rtc import _ffi_client
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc.version import __version__

#: Environment the core reads once, when it starts; an operator's own values win.
CORE_ENVIRONMENT = {"RUST_LOG": "warn", "TOKIO_WORKER_THREADS": "4"}


def configure_sdk_core() -> None:
    """Start the SDK's core with CORE_ENVIRONMENT (unless it already runs in
    this process: then only the log forwarding changes) and turn its log
    forwarding to Python off for the rest of the process."""
    for name, value in CORE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    stop_forwarding_sdk_logs()


def stop_forwarding_sdk_logs() -> None:
    """The core logs to stderr from now on, not through a Python callback."""
    FfiClient.instance._ffi_lib.livekit_ffi_initialize(
        _ffi_client.ffi_event_callback, False, b"python", __version__.encode("ascii"))
