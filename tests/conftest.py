"""Fixtures: a real livekit-server on loopback, the bridge in-process, its logs."""

from __future__ import annotations


import json
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from loguru import logger

from actors.bridge import RunningBridge
from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from actors.livekit.sdk_core import configure_sdk_core
from actors.operations.log_records import Redactor
from actors.operations.log_setup import configure_logging, json_lines
from actors.operations.settings import BridgeSettings
from bridge_harness import running_bridge
from ingest_server import INGEST_TOKEN, IngestCA, IngestServer, ingest_server, make_ca


def pytest_configure(config: pytest.Config) -> None:
    configure_logging(level="DEBUG", log_format="text")  # as in production: no variable values in tracebacks
    # The test process's own phones and listeners run the SDK as the bridge does
    # (with SDK worker processes, the bridge no longer sets this process's SDK up).
    configure_sdk_core()
    config.addinivalue_line("markers", "sdk_in_process: the test looks inside the bridge's own SDK, so the "
                                       "rooms are joined in the bridge's process even with TEST_SDK_WORKERS")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: every test here checks something the
    README promises, and a missing prerequisite is installed by `just test`
    (or named by the test's own failure), never skipped in silence."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_sep("=", f"{len(skipped)} tests were skipped; the suite allows none: "
                            f"{', '.join(report.nodeid for report in skipped[:5])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevLiveKit]:
    """One real livekit-server for the whole run (started with the loopback-only config)."""
    server = start_dev_livekit(tmp_path_factory.mktemp("livekit"), udp_ports=(40000, 40999))
    yield server
    server.stop()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{message}")
    yield lines
    logger.remove(sink)


@pytest.fixture
def log_records() -> Iterator[list[dict]]:
    """Every line logged during the test, as the bridge's JSON lines are
    (actors/operations/log_records.py): flat objects with message, level,
    user_id, room_name and the other fields beside them."""
    records: list[dict] = []
    sink = logger.add(json_lines(lambda line: records.append(json.loads(line)), env=None, redactor=Redactor()),
                      level="DEBUG", format="{message}")
    yield records
    logger.remove(sink)


@pytest.fixture
def bridge_settings(livekit: DevLiveKit, request: pytest.FixtureRequest) -> BridgeSettings:
    # The bridge's own default (one SDK worker process per core), unless the test
    # looks inside the bridge's own SDK; TEST_SDK_WORKERS=0 runs the suite with the SDK in process.
    if request.node.get_closest_marker("sdk_in_process"):
        workers: int | None = 0
    else:
        workers = int(os.environ["TEST_SDK_WORKERS"]) if "TEST_SDK_WORKERS" in os.environ else None
    return BridgeSettings(host="127.0.0.1", port=0, default_livekit_url=livekit.url, connect_timeout=20.0,
                          sdk_workers=workers)


@pytest.fixture
async def bridge(bridge_settings: BridgeSettings) -> AsyncIterator[RunningBridge]:
    """The bridge, serving gRPC on a free loopback TCP port, in the test's
    asyncio loop (trio-asyncio), which the test can use too."""
    async with running_bridge(bridge_settings) as running:
        yield running


@pytest.fixture(scope="session")
def ingest_ca(tmp_path_factory: pytest.TempPathFactory) -> IngestCA:
    return make_ca(tmp_path_factory.mktemp("ingest-ca"))


@pytest.fixture
def ingest(ingest_ca: IngestCA, monkeypatch: pytest.MonkeyPatch) -> Iterator[IngestServer]:
    """A Better Stack ingest server on loopback (tests/ingest_server.py), trusted
    by the bridge through SSL_CERT_FILE (and by nothing else)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ingest_ca.ca_file))
    with ingest_server(ingest_ca, INGEST_TOKEN) as server:
        yield server
