"""CPU pressure (app/http/cpu_pressure.py) on a real loop: a loop blocked past the threshold counts as late
for a while, an idle one does not; a late loop is short of CPU only in a process that itself used the
cores it is asked to; the gauges show the latest measures."""
from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from app.http.cpu_pressure import HOLD_S, TICK_S, WINDOW_S, CpuPressure


def lateness_gauge(service: str) -> float:
    return REGISTRY.get_sample_value("event_loop_lateness_seconds", {"service": service}) or 0.0


def test_a_loop_kept_from_its_timers_is_late_for_a_while_and_an_idle_one_is_not():
    lateness = CpuPressure(late_s=0.02, busy_cores=0.0, service="lateness_a")

    async def scenario() -> None:
        lateness.watch()
        lateness.watch()  # a second call on the same loop adds no second timer
        await asyncio.sleep(10 * TICK_S)
        assert not lateness.late(time.monotonic())
        assert lateness_gauge("lateness_a") < 0.02
        time.sleep(0.1)
        await asyncio.sleep(2 * TICK_S)
        assert lateness.late(time.monotonic())
        assert lateness.late(time.monotonic() + HOLD_S / 2)
        assert not lateness.late(time.monotonic() + HOLD_S + 0.01)
        await asyncio.sleep(3 * TICK_S)
        assert lateness_gauge("lateness_a") < 0.02  # the gauge is the latest measure, not the worst

    asyncio.run(scenario())


def test_measuring_moves_to_a_new_loop_and_ends_with_the_old_one():
    lateness = CpuPressure(late_s=0.02, busy_cores=0.0, service="lateness_b")

    async def blocked() -> None:
        lateness.watch()
        await asyncio.sleep(TICK_S)
        time.sleep(0.1)
        await asyncio.sleep(2 * TICK_S)

    asyncio.run(blocked())
    first_late_until = lateness.late_until
    assert lateness.late(time.monotonic())

    async def second() -> None:
        lateness.watch()
        assert lateness.loop is asyncio.get_running_loop()
        await asyncio.sleep(TICK_S)
        time.sleep(0.1)
        await asyncio.sleep(2 * TICK_S)

    asyncio.run(second())
    assert lateness.loop is not None and lateness.loop.is_closed()
    assert lateness.late_until >= first_late_until + 0.1  # measured on the second loop


def share_gauge(service: str) -> float:
    return REGISTRY.get_sample_value("process_cpu_share", {"service": service}) or 0.0


def test_a_late_loop_is_short_of_cpu_only_in_a_process_that_keeps_the_cores_it_is_asked_to_busy():
    idle = CpuPressure(late_s=0.02, busy_cores=0.5, service="pressure_idle")
    busy = CpuPressure(late_s=0.02, busy_cores=0.5, service="pressure_busy")

    async def waited(pressure: CpuPressure) -> None:
        """A second of waiting (as on a store), then the loop blocked by sleeping: late, yet little CPU."""
        pressure.watch()
        await asyncio.sleep(WINDOW_S + 2 * TICK_S)
        time.sleep(0.1)
        await asyncio.sleep(2 * TICK_S)

    async def worked(pressure: CpuPressure) -> None:
        """A second of computing in short slices (this process's own work), ending in a long one."""
        pressure.watch()
        until = time.monotonic() + WINDOW_S + 2 * TICK_S
        while time.monotonic() < until:
            spin_until = time.monotonic() + 0.005
            while time.monotonic() < spin_until:
                pass
            await asyncio.sleep(0)
        spin_until = time.monotonic() + 0.1
        while time.monotonic() < spin_until:
            pass
        await asyncio.sleep(2 * TICK_S)

    asyncio.run(waited(idle))
    assert idle.late(time.monotonic()) and not idle.short_of_cpu(time.monotonic())
    assert share_gauge("pressure_idle") < 0.5
    asyncio.run(worked(busy))
    assert busy.late(time.monotonic()) and busy.short_of_cpu(time.monotonic())
    assert share_gauge("pressure_busy") >= 0.5
