"""The connect window: wide open while nobody streams, halved when streaming
users' packets come late, grown by one when it was full and they came on time."""

from __future__ import annotations

import trio

from actors.session.connect_admission import AdmissionRule, ConnectAdmission, next_window

RULE = AdmissionRule(ceiling=8, start=2, late=0.1, on_time=0.03)  # (not the defaults: the rule is data)


def test_nobody_streaming_opens_the_window_to_the_ceiling() -> None:
    assert next_window(1, RULE, worst_delay=None, was_full=False) == 8


def test_late_packets_halve_the_window_down_to_one() -> None:
    windows = [8]
    for _ in range(4):
        windows.append(next_window(windows[-1], RULE, worst_delay=0.25, was_full=True))
    assert windows == [8, 4, 2, 1, 1]


def test_a_full_window_with_packets_on_time_grows_by_one_up_to_the_ceiling() -> None:
    assert next_window(2, RULE, worst_delay=0.01, was_full=True) == 3
    assert next_window(8, RULE, worst_delay=0.01, was_full=True) == 8
    assert next_window(3, RULE, worst_delay=0.05, was_full=True) == 3  # neither late nor on time: hold


def test_a_window_nobody_fills_while_users_stream_goes_back_to_the_start() -> None:
    # A deploy opened it to the ceiling; users stream now: the next storm meets the cautious start.
    assert next_window(8, RULE, worst_delay=0.01, was_full=False) == 2
    assert next_window(1, RULE, worst_delay=0.01, was_full=False) == 1


async def test_the_admission_follows_the_links_delays_and_counts_halvings() -> None:
    admission = ConnectAdmission(AdmissionRule(ceiling=8, interval=0.05))
    delays: list[float | None] = [None]
    asked = 0

    def links_delays(now: float) -> list[float | None]:
        nonlocal asked
        asked += 1
        return delays

    async def intervals(count: int) -> None:
        """Return once the admission has set its window ``count`` more times
        (it does at once after asking the links)."""
        until = asked + count
        with trio.fail_after(5):
            while asked < until:
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(admission.run, links_delays)
        await intervals(2)
        assert admission.window == 8  # nobody streams
        delays[:] = [0.01, 0.5]  # one streaming link's packets come half a second late
        await intervals(1)
        assert admission.window == 4 and admission.halvings == 1
        delays[:] = [0.01]
        narrowed = admission.window
        connects = [object() for _ in range(narrowed)]
        for connect in connects:  # demand: the window is full
            admission.slots.acquire_on_behalf_of_nowait(connect)
        with trio.fail_after(5):
            while admission.window == narrowed:
                await trio.sleep(0.01)
        assert admission.window == narrowed + 1
        for connect in connects:
            admission.slots.release_on_behalf_of(connect)
        assert admission.counters()["connect_window"] == admission.window
        delays[:] = [None]  # nobody streams any more: the window opens to the ceiling again
        with trio.fail_after(5):
            while admission.window != 8:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_the_bridges_window_is_the_ceiling_until_a_user_streams_then_its_start(bridge_settings, livekit) -> None:
    """End to end, with two SDK worker processes: the window follows the real
    links' packets, and the workers share it (a window of each worker's own
    would show their sum, 8)."""
    import dataclasses

    from bridge_harness import cloud, join_request, phone_in_room, running_bridge

    async def window(client) -> int:
        return (await client.actor_tree())["children"][0]["counters"]["connect_window"]

    settings = dataclasses.replace(bridge_settings, max_concurrent_connects=4, sdk_workers=2)
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client:
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(client.join, join_request(livekit, f"window-{index}"))
        await trio.sleep(0.3)
        assert await window(client) == 4  # joined, but no phone talks: nobody streams
        async with phone_in_room(livekit, "window-0") as phone, trio.open_nursery() as nursery:
            nursery.start_soon(phone.keep_talking)
            with trio.fail_after(10):
                while await window(client) != 2:  # a user streams, on time, and nobody connects
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        with trio.fail_after(10):  # the phone is gone: nobody streams, the window is the ceiling again
            while await window(client) != 4:
                await trio.sleep(0.1)


def test_the_sdk_worker_processes_share_one_window(bridge_settings) -> None:
    """Three workers, one set of connect slots: a storm's connects in one
    process delay the packets of the others too (they share the cores)."""
    import contextlib
    import dataclasses

    from actors.session.room_hosts import RoomHosts

    hosts = RoomHosts(dataclasses.replace(bridge_settings, sdk_workers=3, max_concurrent_connects=5))
    with contextlib.ExitStack() as placed:
        workers = [placed.enter_context(hosts.placing([])) for _ in range(3)]
    assert sorted(worker.name for worker in workers) == ["sdk-worker:1", "sdk-worker:2", "sdk-worker:3"]
    assert len({id(worker.connect_slots) for worker in workers}) == 1
    assert workers[0].connect_slots.total_tokens == 5
