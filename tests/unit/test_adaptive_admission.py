"""How many requests a process admits at once follows how long admitted requests take (app/http/admission.py
LatencyLimit): slow answers lower it while the process is short of CPU (its event loop late), quick ones
raise it back; slow answers of a slow store, a client's slow upload and a read that asks to wait for its own
write do not lower it. `busy_cores=0` here: these apps do too little for their own CPU share to count."""
from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import REGISTRY

from app.http.admission import Admission, LatencyLimit
from tests.unit.test_admission import Held, assert_overloaded, asgi_client, new_service, run


def test_slow_answers_cut_the_limit_once_per_target_interval_down_to_the_floor_and_quick_ones_raise_it():
    limit = LatencyLimit(ceiling=64, floor=4, target_s=0.1)
    limit.observe(0.2, now=10.0, short_of_cpu=True)
    assert limit.current == 48
    limit.observe(0.2, now=10.05, short_of_cpu=True)  # the same burst of slow answers counts once
    assert limit.current == 48
    for step in range(1, 20):
        limit.observe(0.2, now=10.0 + step * 0.11, short_of_cpu=True)
    assert limit.current == 4
    for _ in range(5):
        limit.observe(0.01, now=20.0, short_of_cpu=False)
    assert limit.current == 5  # about one more slot per `limit` quick answers
    for _ in range(10_000):
        limit.observe(0.01, now=21.0, short_of_cpu=True)
    assert limit.current == 64


def test_slow_answers_while_the_process_has_the_cpu_it_needs_hold_the_limit_where_it_is():
    limit = LatencyLimit(ceiling=64, floor=4, target_s=0.1)
    for step in range(20):
        limit.observe(5.0, now=10.0 + step * 0.11, short_of_cpu=False)
    assert limit.current == 64
    limit.observe(0.2, now=20.0, short_of_cpu=True)
    assert limit.current == 48


def admitting(max_in_flight: int = 8, busy_cores: float = 0.0, **adaptive) -> tuple[Held, Admission, str]:
    """A held app behind admission with its own metrics label; `adaptive` = target_ms / floor, if any."""
    held, service = Held(), new_service()
    return held, Admission(held.app, max_in_flight=max_in_flight, wait_ms=0, service=service,
                           busy_cores=busy_cores, **adaptive), service


async def hold_together(client: httpx.AsyncClient, held: Held, keys: list[str], hold_s: float,
                        busy_s: float = 0.0) -> list[int]:
    """Send one held request per key at once, answer them after `hold_s`; their statuses. With `busy_s`, the
    event loop is kept from running anything for that long while they are held, as when the process is
    short of CPU (otherwise they only wait, as on a slow store)."""
    sent = [asyncio.create_task(client.post(f"/api/hold/{key}", content=b"{}")) for key in keys]
    await asyncio.sleep(hold_s / 2)
    time.sleep(busy_s)
    await asyncio.sleep(hold_s / 2)
    for key in keys:
        held.release(key)
    return [r.status_code for r in await asyncio.gather(*sent)]


BUSY_S = 0.06  # the loop blocked three times the lateness that counts at a 40 ms target


def assert_slow_answers_hold_the_limit(held: Held, admission: Admission, busy_s: float = 0.0) -> None:
    """Three rounds of eight answers, each held 0.15 s (with the loop blocked `busy_s`): all admitted, and
    the limit still 8."""
    async def scenario() -> None:
        async with asgi_client(admission) as client:
            for round_ in range(3):
                statuses = await hold_together(client, held, [f"s{round_}-{i}" for i in range(8)], 0.15, busy_s)
                assert statuses == [200] * 8
        assert admission.limit.current == 8

    run(scenario)


def test_slow_answers_of_a_slow_store_do_not_lower_the_limit():
    assert_slow_answers_hold_the_limit(*admitting(target_ms=40, floor=2)[:2])


def test_slow_answers_in_a_process_doing_little_while_the_machine_is_busy_do_not_lower_the_limit():
    held, admission, _ = admitting(target_ms=40, floor=2, busy_cores=0.9)  # this process sleeps, it does not compute
    assert_slow_answers_hold_the_limit(held, admission, BUSY_S)
    assert admission.pressure.late(time.monotonic())


def test_after_slow_answers_fewer_requests_are_admitted_at_once_and_quick_answers_restore_them():
    held, admission, service = admitting(target_ms=40, floor=2)

    async def scenario() -> None:
        async with asgi_client(admission) as client:
            assert await hold_together(client, held, [f"a{i}" for i in range(8)], 0.15, BUSY_S) == [200] * 8
            assert admission.limit.current == 6  # eight slow answers at once: one cut
            for round_ in range(4):  # each round as many slow requests as the limit takes: 6 -> 4 -> 3 -> 2
                await hold_together(client, held, [f"b{round_}-{i}" for i in range(admission.limit.current)], 0.15,
                                    BUSY_S)
            assert admission.limit.current == 2
            statuses = await hold_together(client, held, ["c0", "c1", "c2"], 0.15)
            assert sorted(statuses) == [200, 200, 503]
            for i in range(40):
                held.release(f"quick{i}")
                assert (await client.post(f"/api/hold/quick{i}", content=b"{}")).status_code == 200
            assert admission.limit.current >= 3
            before = held.handled
            sent = [asyncio.create_task(client.post(f"/api/hold/d{i}", content=b"{}")) for i in range(3)]
            await held.until_handling(before + 3)  # all three admitted at once
            for i in range(3):
                held.release(f"d{i}")
            assert [r.status_code for r in await asyncio.gather(*sent)] == [200] * 3

    run(scenario)


def test_a_slow_upload_and_a_read_that_waits_for_its_own_write_do_not_count_as_slow():
    held, admission, service = admitting(target_ms=40, floor=2)

    @held.app.get("/api/orders/{order_id}")
    async def waits(order_id: str) -> dict:
        await asyncio.sleep(0.12)  # as a read with a consistency token waits for the projection,
        time.sleep(0.03)  # on a process short of CPU (eight of these keep the loop late)
        return {"order_id": order_id}

    async def slow_upload(key: str) -> int:
        """A POST whose body arrives 0.15 s after its headers; the handler answers at once."""
        sent: list[dict] = []
        chunks = [{"type": "http.request", "body": b"{", "more_body": True},
                  {"type": "http.request", "body": b"}", "more_body": False}]

        async def receive() -> dict:
            if len(chunks) == 1:
                await asyncio.sleep(0.15)
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        held.release(key)
        await admission({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                         "scheme": "http", "path": f"/api/hold/{key}", "raw_path": f"/api/hold/{key}".encode(),
                         "root_path": "", "query_string": b"", "headers": [(b"host", b"test")],
                         "client": ("127.0.0.1", 1), "server": ("test", 80)}, receive, send)
        return sent[0]["status"]

    async def scenario() -> None:
        assert await asyncio.gather(*[slow_upload(f"up{i}") for i in range(8)]) == [200] * 8
        assert admission.limit.current == 8
        async with asgi_client(admission) as client:
            async def eight(path: str, headers: dict[str, str] | None = None) -> list[int]:
                answers = await asyncio.gather(*[client.get(path, headers=headers) for _ in range(8)])
                return [r.status_code for r in answers]

            assert await eight("/api/orders/o-1", {"Consistency-Token": "order:o-1@2"}) == [200] * 8
            assert await eight("/api/orders/o-1?min_version=2") == [200] * 8
            assert admission.limit.current == 8
            assert await eight("/api/orders/o-1") == [200] * 8  # the same wait, not asked for
            assert admission.limit.current < 8

    run(scenario)


def test_a_shed_answer_says_why():
    held, admission, _ = admitting(max_in_flight=1)

    async def scenario() -> None:
        async with asgi_client(admission) as client:
            first = asyncio.create_task(client.post("/api/hold/x", content=b"{}"))
            await held.until_handling(1)
            shed = await client.post("/api/hold/y", content=b"{}")
            assert_overloaded(shed)
            assert "at most 1" in shed.json()["message"]
            held.release("x")
            await first

    run(scenario)


def test_the_limit_in_force_is_a_metric():
    held, admission, service = admitting(target_ms=40, floor=2)

    async def scenario() -> None:
        assert REGISTRY.get_sample_value("http_admission_limit", {"service": service}) == 8
        async with asgi_client(admission) as client:
            await hold_together(client, held, [f"slow{i}" for i in range(8)], 0.15, BUSY_S)
        assert REGISTRY.get_sample_value("http_admission_limit", {"service": service}) == 6

    run(scenario)


def test_with_no_target_the_limit_is_fixed_however_slow_answers_get():
    assert_slow_answers_hold_the_limit(*admitting(busy_cores=0.0)[:2], BUSY_S)
