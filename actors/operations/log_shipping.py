"""Shipping the bridge's log lines to Better Stack, as the deployed Go bridge
did (BETTERSTACK_SOURCE_TOKEN and BETTERSTACK_INGESTING_HOST, both or off).

It guarantees:

- Logging never waits for the network. The sink is a plain loguru sink,
  called in whichever thread logs (the Trio loop, an SDK callback): it
  writes the line in the flat schema (log_records.py), secrets taken out,
  into a buffer bounded in bytes (BRIDGE_LOG_SHIP_BUFFER_BYTES); when it is
  full the oldest line is dropped and counted.
- One Trio task sends, in the bridge's nursery: a POST of a JSON array to
  https://<host> with ``Authorization: Bearer <token>``, as soon as
  BRIDGE_LOG_SHIP_BATCH lines wait or every BRIDGE_LOG_SHIP_INTERVAL seconds,
  but no sooner than MIN_REQUEST_GAP after the last request began; a request
  carries what waits, up to MAX_REQUEST_BYTES.
- A request that fails with 5xx, 429 or a network error is sent again after
  a backoff (429's Retry-After honoured), its lines held meanwhile; 413
  splits it in halves (a line refused alone is dropped); any other 4xx drops
  its lines. Drops and failures are counted (metrics.py), and each kind of
  failure is written once on stderr, outside the logs: nothing about
  shipping is ever shipped (lines logged while sending are not shipped).
- When the bridge stops, the task sends on while the sessions tear down;
  then what is still buffered is sent within FINAL_FLUSH_SECONDS, and what
  is not sent by then is counted dropped (exit). A host that does not
  answer never holds the exit up longer.
- The SDK worker processes hold none of the bridge's secrets, so they do
  not ship: :class:`WorkerLines` hands their lines to the bridge over the
  socket they share (actors/sdk_workers/), which ships them as its own.

HTTPS trusts httpx's default CAs (certifi), or the bundle SSL_CERT_FILE
names; HTTPS_PROXY is honoured, as Go's client did.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime
import email.utils
import json
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from ..runtime import Backoff
from .log_records import Redactor, core_fields, encode, flat_line
from .log_setup import chosen_format
from .metrics import LOG_BATCHES_FAILED, LOG_LINES_DROPPED, LOG_LINES_SHIPPED

if TYPE_CHECKING:
    import httpx

    from ..sdk_workers.frames import Outbox
    from .settings import BridgeSettings

#: The most one request carries (Better Stack takes up to 10 MiB).
MAX_REQUEST_BYTES = 1024 * 1024
#: The least time between the starts of two requests. A request costs the
#: bridge about 2 ms of CPU (httpx, TLS), whatever it carries: at 1,000 lines a
#: second, one request for every 10 lines cost more than the lines themselves
#: (bench/reports/log-shipping-2026-12-06.md). Paced, each carries what waited.
MIN_REQUEST_GAP = 0.1
#: At exit, the longest the last lines may take to go out.
FINAL_FLUSH_SECONDS = 2.0
#: A request's timeouts: connecting (TLS included), and each read or write.
CONNECT_TIMEOUT, IO_TIMEOUT = 5.0, 10.0
#: Waits between attempts at a request that failed in a way worth retrying.
RETRY_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: The longest Retry-After honoured (a larger one is read as this).
MAX_RETRY_AFTER = 300.0
#: Lines an SDK worker process holds for the bridge at most (bytes of JSON).
WORKER_BUFFER_BYTES = 1024 * 1024

#: Set in the sending task: what is logged there is not shipped (it could be about shipping).
_sending: contextvars.ContextVar[bool] = contextvars.ContextVar("log_shipping_sending", default=False)
#: The process's shipper while one is installed (loguru's handlers are the process's too).
_active: LogShipper | None = None


class LineBuffer:
    """Encoded log lines, bounded in bytes: appending to a full buffer drops
    the oldest lines. Safe to use from any thread."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lines: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        #: Lines dropped since the start.
        self.dropped = 0

    def append(self, line: bytes) -> int:
        """Add ``line``; returns how many of the oldest lines it dropped."""
        dropped = 0
        with self._lock:
            self._lines.append(line)
            self._bytes += len(line)
            while self._bytes > self.max_bytes and len(self._lines) > 1:
                self._bytes -= len(self._lines.popleft())
                dropped += 1
            self.dropped += dropped
        return dropped

    def take(self, max_bytes: int) -> list[bytes]:
        """The oldest lines, as many as fit in ``max_bytes`` (at least one if any)."""
        with self._lock:
            taken: list[bytes] = []
            size = 0
            while self._lines and (not taken or size + len(self._lines[0]) <= max_bytes):
                line = self._lines.popleft()
                taken.append(line)
                size += len(line)
            self._bytes -= size
            return taken

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._lines)


class _Wakeup:
    """An event that any thread may set, once a Trio task has armed it."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._event = trio.Event()

    def arm(self) -> None:
        self._token = trio.lowlevel.current_trio_token()

    def disarm(self) -> None:
        self._token = None

    def set(self) -> None:
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._fire, idempotent=True)

    def _fire(self) -> None:
        self._event.set()  # the event current when it runs: never a wake-up lost to wait()'s swap

    async def wait(self, timeout: float = float("inf")) -> None:
        """Until set (or ``timeout`` seconds); then unset."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        self._event = trio.Event()


class LogShipper:
    """Ships the lines its sink is given (see the module's docstring)."""

    def __init__(self, settings: BridgeSettings) -> None:
        assert settings.log_shipping_url is not None and settings.betterstack_source_token is not None
        self.url = settings.log_shipping_url
        self._headers = {"Authorization": f"Bearer {settings.betterstack_source_token}",
                         "Content-Type": "application/json"}
        self._batch_lines = settings.log_ship_batch
        self._interval = settings.log_ship_interval
        self._env = settings.log_env
        self._redactor = Redactor(settings.secret_values)
        self._json_on_stderr = chosen_format(settings.log_format) == "json"
        self.buffer = LineBuffer(settings.log_ship_buffer_bytes)
        self._wakeup = _Wakeup()
        #: The lines of the request under way (sent again, or counted, at exit).
        self._in_hand: list[bytes] = []
        self._warned: set[str] = set()
        self._handler: int | None = None

    # -- taking lines in (any thread) ------------------------------------------

    def sink(self, message: Any) -> None:
        """The loguru sink."""
        self._take_in(flat_line(message.record, env=self._env))

    def take_in_worker_lines(self, lines: list[bytes], dropped_there: int) -> None:
        """Lines an SDK worker process handed over (WorkerLines), and how many
        it dropped since its last hand-over."""
        for line in lines:
            self._take_in({**json.loads(line), "env": self._env})
        if dropped_there:
            LOG_LINES_DROPPED.labels("worker_buffer_full").inc(dropped_there)

    def _take_in(self, line: dict[str, Any]) -> None:
        dropped = self.buffer.append(encode(self._redactor.line(line)).encode())
        if dropped:
            LOG_LINES_DROPPED.labels("buffer_full").inc(dropped)
            self._warn_once("buffer_full", "the log line buffer is full (BRIDGE_LOG_SHIP_BUFFER_BYTES): the oldest "
                                           "lines are dropped (bridge_log_lines_dropped_total)")
        elif len(self.buffer) == self._batch_lines:
            self._wakeup.set()

    def install(self, level: str) -> None:
        """Add the sink to loguru, for lines at ``level`` or above."""
        self._handler = logger.add(self.sink, level=level.upper(), format="{message}", diagnose=False,
                                   backtrace=False, filter=lambda record: not _sending.get())

    def uninstall(self) -> None:
        if self._handler is not None:
            logger.remove(self._handler)
            self._handler = None

    # -- sending (the Trio task) -----------------------------------------------

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[None]:
        """Send while the block runs (on, while the block's own teardown
        runs); then send what is left within FINAL_FLUSH_SECONDS."""
        import httpx  # (only a shipping bridge needs it, and only once it runs)

        client = httpx.AsyncClient(timeout=httpx.Timeout(IO_TIMEOUT, connect=CONNECT_TIMEOUT))
        try:
            async with trio.open_nursery() as nursery:
                # Shielded: it goes on sending while the rest of the bridge tears down.
                sender = trio.CancelScope(shield=True)
                nursery.start_soon(self._send_until_cancelled, client, sender)
                try:
                    yield
                finally:
                    sender.cancel()
        finally:
            with trio.CancelScope(shield=True):
                sending = _sending.set(True)
                try:
                    await self._send_what_is_left(client)
                finally:
                    _sending.reset(sending)
                    await client.aclose()  # (closes its sockets without waiting for the host)

    async def _send_until_cancelled(self, client: httpx.AsyncClient, scope: trio.CancelScope) -> None:
        _sending.set(True)  # (this task's context): what it logs is not shipped
        self._wakeup.arm()
        try:
            with scope:
                while True:
                    await self._wakeup.wait(self._interval)
                    while batch := self.buffer.take(MAX_REQUEST_BYTES):
                        began = trio.current_time()
                        self._in_hand = batch
                        await self._deliver(client, batch)
                        self._in_hand = []
                        await trio.sleep_until(began + MIN_REQUEST_GAP)
        finally:
            self._wakeup.disarm()

    async def _send_what_is_left(self, client: httpx.AsyncClient) -> None:
        pending, self._in_hand = self._in_hand, []
        with trio.move_on_after(FINAL_FLUSH_SECONDS):
            while pending or len(self.buffer):
                pending = pending or self.buffer.take(MAX_REQUEST_BYTES)
                await self._deliver(client, pending)
                pending = []
        unsent = len(pending) + len(self.buffer.take(sys.maxsize))
        if unsent:
            LOG_LINES_DROPPED.labels("exit").inc(unsent)
            self._warn_once("exit", f"{unsent} log lines were not shipped within {FINAL_FLUSH_SECONDS:g} s at exit")

    async def _deliver(self, client: httpx.AsyncClient, lines: list[bytes]) -> None:
        """Send ``lines`` until Better Stack accepts or refuses them for good."""
        import httpx

        attempt = 0
        while True:
            attempt += 1
            try:
                response = await client.post(self.url, content=b"[" + b",".join(lines) + b"]",
                                             headers=self._headers)
            except httpx.HTTPError as error:  # refused, unreachable, TLS, timeouts
                reason, wait = "unreachable", RETRY_BACKOFF.delay(attempt)
                detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                status = response.status_code
                if status < 300:
                    LOG_LINES_SHIPPED.inc(len(lines))
                    return
                detail = f"HTTP {status} {response.reason_phrase}"
                if status == 413:
                    LOG_BATCHES_FAILED.labels("too_large").inc()
                    if len(lines) == 1:
                        self._drop(lines, "too_large", f"a log line of {len(lines[0])} bytes was refused ({detail})")
                        return
                    half = len(lines) // 2
                    await self._deliver(client, lines[:half])
                    await self._deliver(client, lines[half:])
                    return
                if status != 429 and status < 500:
                    LOG_BATCHES_FAILED.labels("rejected").inc()
                    self._drop(lines, "rejected", f"Better Stack refused log lines ({detail}); check "
                                                  f"BETTERSTACK_SOURCE_TOKEN and BETTERSTACK_INGESTING_HOST")
                    return
                reason = "rate_limited" if status == 429 else "server_error"
                wait = _retry_after(response) if status == 429 else None
                wait = RETRY_BACKOFF.delay(attempt) if wait is None else wait
            LOG_BATCHES_FAILED.labels(reason).inc()
            self._warn_once(reason, f"shipping log lines to {self.url} failed ({detail}); retrying with backoff, "
                                    f"the lines held meanwhile")
            await trio.sleep(wait)

    def _drop(self, lines: list[bytes], reason: str, why: str) -> None:
        LOG_LINES_DROPPED.labels(reason).inc(len(lines))
        self._warn_once(reason, f"{why}: dropped (bridge_log_lines_dropped_total)")

    def _warn_once(self, kind: str, message: str) -> None:
        """On stderr, not through loguru: a line about shipping is never shipped."""
        if kind in self._warned:
            return
        self._warned.add(kind)
        message = f"log shipping: {message} (said once)"
        now = datetime.datetime.now(datetime.timezone.utc)
        if self._json_on_stderr:
            line = encode({**core_fields("WARNING", message, now, env=self._env), "logger": __name__})
        else:
            line = f"{now.astimezone():%Y-%m-%d %H:%M:%S.%f} | WARNING  | {__name__} - {message}"
        with contextlib.suppress(Exception):  # a closed stderr must not break the sender
            print(line, file=sys.stderr, flush=True)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def start_log_shipping(settings: BridgeSettings) -> LogShipper | None:
    """Install the process's shipper when the settings turn shipping on (its
    sink buffers from now on; ``ship_logs`` sends), saying so in a log line;
    None when they do not."""
    global _active
    if _active is None and settings.log_shipping_url is not None:
        _active = LogShipper(settings)
        _active.install(settings.log_level)
        logger.info("shipping log lines at {} and above to Better Stack at {} (as soon as {} wait, or every {:g} s)",
                    settings.log_level.upper(), _active.url, settings.log_ship_batch, settings.log_ship_interval)
    return _active


@contextlib.asynccontextmanager
async def ship_logs(settings: BridgeSettings) -> AsyncIterator[None]:
    """Ship log lines while the block runs, and send the last ones at its
    end (see the module's docstring); when the settings leave shipping off,
    say so in one log line. The process's shipper is installed here unless
    it was already (start_log_shipping), and then removed at the end."""
    global _active
    installed_here = _active is None
    shipper = start_log_shipping(settings)
    if shipper is None:
        logger.info("log shipping to Better Stack is off: {}", _why_off(settings))
        yield
        return
    try:
        async with shipper.sending():
            yield
    finally:
        if installed_here:
            shipper.uninstall()
            _active = None


def _why_off(settings: BridgeSettings) -> str:
    token, host = bool(settings.betterstack_source_token), bool(settings.betterstack_ingesting_host)
    if token == host:
        return "BETTERSTACK_SOURCE_TOKEN and BETTERSTACK_INGESTING_HOST are not set"
    return f"{'BETTERSTACK_SOURCE_TOKEN' if token else 'BETTERSTACK_INGESTING_HOST'} is set, but not " \
           f"{'BETTERSTACK_INGESTING_HOST' if token else 'BETTERSTACK_SOURCE_TOKEN'}; set both to ship"


def shipping_active() -> bool:
    """Whether this process ships its log lines (SDK workers then hand theirs over)."""
    return _active is not None


def ship_worker_lines(lines: list[bytes], dropped_there: int) -> None:
    """Ship what an SDK worker process handed over (its ("log", ...) message)."""
    if _active is not None:
        _active.take_in_worker_lines(lines, dropped_there)


class WorkerLines:
    """An SDK worker process's log lines on their way to the bridge: a loguru
    sink holds them (bounded: the oldest dropped and counted), and
    :meth:`hand_over` puts them in the process's outbox, one hand-over at a
    time, so a bridge that stops reading costs the worker bounded memory."""

    def __init__(self, max_bytes: int = WORKER_BUFFER_BYTES) -> None:
        self.buffer = LineBuffer(max_bytes)
        self._wakeup = _Wakeup()

    def sink(self, message: Any) -> None:
        self.buffer.append(encode(flat_line(message.record, env=None)).encode())
        self._wakeup.set()

    def install(self, level: str) -> None:
        logger.add(self.sink, level=level.upper(), format="{message}", diagnose=False, backtrace=False)

    async def hand_over(self, outbox: Outbox) -> None:
        """Until cancelled: put ("log", lines, lines dropped since the last)
        in ``outbox`` as lines come, once the last hand-over was written."""
        self._wakeup.arm()
        self._wakeup.set()  # the lines of the start-up
        reported = 0
        written_after = -1
        while True:
            await self._wakeup.wait()
            while outbox.frames <= written_after:  # the last hand-over still waits in the outbox
                await trio.sleep(0.05)
            dropped = self.buffer.dropped
            lines = self.buffer.take(MAX_REQUEST_BYTES)
            if lines or dropped != reported:
                # Counted before the put: a put may write its frame at once.
                written_after = outbox.frames
                outbox.put(("log", lines, dropped - reported))
                reported = dropped
            if len(self.buffer):
                self._wakeup.set()

