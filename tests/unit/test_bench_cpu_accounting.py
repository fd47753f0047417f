"""The benchmarks' CPU accounting by process role: a JVM's compiler threads count apart from the server's
steady work, and the parts always add up to what the processes spent."""
from __future__ import annotations

import os

from benchmarks.measures import JIT, cpu_by_role, process_cpu

ES = "/usr/share/elasticsearch/jdk/bin/java -Xms1g org.elasticsearch.bootstrap.Elasticsearch"


def test_a_jvms_compiler_threads_count_apart_and_the_parts_add_up():
    before = {10: (ES, 5, 100.0, 40.0), 11: ("redis-server 127.0.0.1:6379", 6, 3.0, 0.0)}
    after = {10: (ES, 5, 112.0, 45.0), 11: ("redis-server 127.0.0.1:6379", 6, 4.5, 0.0)}
    roles = cpu_by_role(before, after, own={})
    assert roles == {"Elasticsearch": 7.0, "Elasticsearch" + JIT: 5.0, "Redis": 1.5}


def test_a_restarted_process_counts_from_its_start():
    before = {10: (ES, 5, 100.0, 40.0)}
    after = {10: (ES, 9, 6.0, 4.0)}  # the same pid, started again: everything it spent is in this window
    assert cpu_by_role(before, after, own={}) == {"Elasticsearch": 2.0, "Elasticsearch" + JIT: 4.0}


def test_no_process_without_compiler_threads_has_a_jit_share():
    mine = process_cpu()[os.getpid()]
    assert mine[2] > 0 and mine[3] == 0.0
