"""Downloading audio over HTTP, streamed, with every limit a production service needs.

httpx runs here on Trio (through anyio); nothing is read ahead of what the
caller consumes, so memory stays bounded whatever the file's size. Every way
a download can go wrong ends in :class:`FetchError` with a reason a person can
act on. URLs are logged and reported without their query strings, which may
carry credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable

import certifi
import httpx
import trio


class FetchError(Exception):
    """The audio could not be downloaded; the message says why."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_private_address(address: IPAddress) -> bool:
    """The private-address guard's default: private, loopback, link-local or unspecified."""
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


@dataclasses.dataclass(frozen=True)
class FetchLimits:
    connect_timeout: float = 5.0
    #: Longest wait for the next bytes of an answer.
    idle_read_timeout: float = 10.0
    max_bytes: int = 50_000_000
    max_redirects: int = 5
    #: Refuse URLs (and redirects) that lead to private, loopback or link-local addresses.
    refuse_private_addresses: bool = False
    #: The addresses that guard refuses (tests, whose servers are all on loopback, let one through).
    is_refused_address: Callable[[IPAddress], bool] = is_private_address


def redacted(url: str) -> str:
    """``url`` without query string, fragment or user info: safe to log."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_url(url: str) -> None:
    """Raises FetchError unless ``url`` is an absolute http or https URL."""
    if not url:
        raise FetchError("audio_url is empty")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"audio_url must be an http:// or https:// URL, not {parts.scheme or 'a relative'}:// one")
    if not parts.hostname:
        raise FetchError(f"audio_url {redacted(url)!r} names no host")


@dataclasses.dataclass
class AudioDownload:
    """An answer whose headers have arrived; its body is read with :meth:`chunks`."""

    url: str  # after redirects, redacted
    content_type: str
    content_length: int | None
    _response: httpx.Response
    _limits: FetchLimits
    received_bytes: int = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives.

        Raises:
            FetchError: the body exceeds the size cap, the server went silent
                for longer than the idle timeout, or the connection broke off
                before the whole body arrived.
        """
        try:
            async for chunk in self._response.aiter_raw():
                self.received_bytes += len(chunk)
                if self.received_bytes > self._limits.max_bytes:
                    raise FetchError(_too_large(self._limits.max_bytes))
                yield chunk
        except httpx.ReadTimeout:
            raise FetchError(
                f"the audio server sent nothing for {self._limits.idle_read_timeout:g} s "
                f"after {self.received_bytes} bytes") from None
        except httpx.TransportError as error:  # RemoteProtocolError, ReadError, ...
            raise FetchError(
                f"the download broke off after {self.received_bytes} bytes: {error or type(error).__name__}"
            ) from None


@contextlib.asynccontextmanager
async def open_audio_url(url: str, limits: FetchLimits) -> AsyncIterator[AudioDownload]:
    """GET ``url``, following at most ``limits.max_redirects`` http(s) redirects,
    and yield once a successful answer's headers have arrived.

    Raises:
        FetchError: the URL is not http(s); the host could not be resolved or
            reached in time; a redirect went elsewhere than http(s) or too
            often; the guard refused a private address; the server answered
            with an error status or a body declared larger than the cap.
    """
    check_url(url)
    checks = [_refuse_other_schemes]
    if limits.refuse_private_addresses:
        checks.append(functools.partial(_refuse_private_address, is_refused=limits.is_refused_address))
    hooks = {"request": checks}
    timeout = httpx.Timeout(limits.idle_read_timeout, connect=limits.connect_timeout)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=True, max_redirects=limits.max_redirects,
        event_hooks=hooks, trust_env=False, verify=_tls_context(),
    ) as client:
        try:
            async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                _check_response(response, limits)
                yield AudioDownload(
                    url=redacted(str(response.url)),
                    content_type=response.headers.get("content-type", ""),
                    content_length=_content_length(response),
                    _response=response,
                    _limits=limits,
                )
        except httpx.ConnectTimeout:
            raise FetchError(f"no connection to {_host(url)} within {limits.connect_timeout:g} s") from None
        except httpx.ReadTimeout:
            raise FetchError(f"{_host(url)} sent no answer within {limits.idle_read_timeout:g} s") from None
        except httpx.TooManyRedirects:
            raise FetchError(f"{redacted(url)} redirects more than {limits.max_redirects} times") from None
        except httpx.UnsupportedProtocol as error:
            raise FetchError(f"{redacted(url)} redirects to a URL that is not http(s): {error}") from None
        except httpx.ConnectError as error:
            raise FetchError(f"could not connect to {_host(url)}: {_cause(error)}") from None
        except httpx.TransportError as error:
            raise FetchError(f"fetching {redacted(url)} failed: {_cause(error)}") from None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Made once: loading the CA bundle takes longer than a loopback fetch."""
    return ssl.create_default_context(cafile=certifi.where())


def _check_response(response: httpx.Response, limits: FetchLimits) -> None:
    if response.status_code >= 300:
        raise FetchError(
            f"{redacted(str(response.url))} answered HTTP {response.status_code} {response.reason_phrase}")
    length = _content_length(response)
    if length is not None and length > limits.max_bytes:
        raise FetchError(_too_large(limits.max_bytes) + f" (the server announces {length} bytes)")


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _too_large(limit: int) -> str:
    return f"the audio file is larger than the {limit / 1e6:g} MB cap"


async def _refuse_other_schemes(request: httpx.Request) -> None:
    """Runs before every request, redirects included."""
    if request.url.scheme not in ("http", "https"):
        raise FetchError(f"a redirect leads to a URL that is not http(s): {request.url.scheme}://{request.url.host}")


async def _refuse_private_address(request: httpx.Request, *, is_refused: Callable[[IPAddress], bool]) -> None:
    host = request.url.host
    try:
        infos = await trio.socket.getaddrinfo(host, request.url.port or 443, type=trio.socket.SOCK_STREAM)
    except OSError as error:
        raise FetchError(f"could not resolve {host}: {error}") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if is_refused(address):
            raise FetchError(f"{host} resolves to {address}, a private address; the bridge refuses those")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or url


def _cause(error: BaseException) -> str:
    """The innermost reason (e.g. 'Connection refused', 'Name or service not known')."""
    message = str(error)
    while error.__context__ is not None and not message:
        error = error.__context__
        message = str(error)
    return message or type(error).__name__
