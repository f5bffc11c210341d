"""log.timed and log.timings: what a profiler receives, and nothing without one."""

from __future__ import annotations

import threading

import pytest

from ovs_service import log
from ovs_service.log import Timing


def test_without_a_sink_nothing_is_timed() -> None:
    with log.timed("restore-bridge", "br0", 7) as record:
        pass
    assert (record.name, record.scope, record.count, record.seconds) == ("restore-bridge",
                                                                         "br0", 7, 0.0)


def test_a_sink_gets_each_part_once_with_its_count_even_when_it_fails() -> None:
    got: list[Timing] = []
    with log.timings(got.append):
        with log.timed("flow-count", "br0") as record:
            record.count = 3
        with pytest.raises(ValueError), log.timed("restore-bridge", "br1"):
            raise ValueError
    with log.timed("after", "br0"):
        pass
    assert [(t.name, t.scope, t.count) for t in got] == [("flow-count", "br0", 3),
                                                          ("restore-bridge", "br1", 0)]
    assert all(t.began > 0 and t.seconds >= 0 and t.cpu_seconds >= 0 for t in got)


def test_the_parts_of_every_thread_reach_the_sink_and_one_sink_at_a_time() -> None:
    got: list[Timing] = []

    def part(name: str) -> None:
        with log.timed("restore-bridge", name):
            pass

    with log.timings(got.append):
        threads = [threading.Thread(target=part, args=(f"br{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(RuntimeError), log.timings(got.append):
            pass
    assert sorted(t.scope for t in got) == ["br0", "br1", "br2", "br3"]
