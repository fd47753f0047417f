"""The teardown of `make bench-projections` (and `make bench-rebuild`): stop the child processes and
delete everything the run created, each kind of thing on its own so one failure leaves the rest
deleted. Methods of the benchmark run."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

from app.operations import processes
from benchmarks.projection_run import ROOT


class Cleanup:
    def stop_children(self) -> None:
        for child in self.children:
            try:
                child.stop(timeout=20) if hasattr(child, "stop") else processes.stop_process(child, 20.0)
            except Exception as exc:  # already gone, or would not die: nothing more to do
                print(f"stopping a child process: {exc}", file=sys.stderr)

    def cleanup(self) -> list[str]:
        """Delete everything the run created; returns one line per thing that could not be deleted."""
        from connectors import kafka

        admin = kafka.admin_client(self.settings)
        steps: tuple[tuple[str, Callable[[], Any]], ...] = (
            ("topics", lambda: self.delete_topics(admin)),
            ("consumer groups", lambda: self.delete_consumer_groups(admin)),
            ("schema subjects", self.delete_schema_subjects),
            ("search indices", self.delete_search_indices),
            ("MongoDB databases", self.drop_databases),
            ("Redis db 1", self.flush_redis_db),
            ("Faust data directories", self.remove_data_dirs))
        problems: list[str] = []
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return problems

    def delete_topics(self, admin: Any) -> None:
        from connectors import kafka

        names = [t for t in admin.list_topics(timeout=10).topics if self.iso.marker in t]
        kafka.delete_topics(self.settings, names)

    def delete_consumer_groups(self, admin: Any) -> None:
        listed = admin.list_consumer_groups(request_timeout=10).result(15)
        names = [g.group_id for g in listed.valid if self.iso.marker in g.group_id]
        for fut in (admin.delete_consumer_groups(names, request_timeout=10).values() if names else []):
            try:
                fut.result(15)
            except Exception as exc:   # a group that never committed has nothing to delete
                if "GROUP_ID_NOT_FOUND" not in str(exc):
                    raise

    def delete_schema_subjects(self) -> None:
        from connectors import registry
        from schemas import TOPICS, subject_for

        client = registry.registry_client(self.settings)
        for topic in TOPICS:
            subject = subject_for(self.iso.prefix + topic)
            try:
                client.delete_subject(subject)
                client.delete_subject(subject, permanent=True)
            except Exception as exc:
                if "40401" not in str(exc) and "not found" not in str(exc).lower():
                    raise

    def delete_search_indices(self) -> None:
        from connectors import elasticsearch

        es = elasticsearch.es_client(self.settings)
        try:
            found = es.options(ignore_status=404).indices.get(index=f"{self.settings.es_products_alias}*")
            for name in (found.body if hasattr(found, "body") else found):
                if name.startswith(self.settings.es_products_alias):
                    es.indices.delete(index=name)
        finally:
            es.close()

    def drop_databases(self) -> None:
        from connectors import mongo

        client = mongo.mongo_client(self.settings)
        try:
            for name in (self.settings.mongo_database, f"{self.settings.mongo_database}_naive"):
                client.drop_database(name)
        finally:
            client.close()

    def flush_redis_db(self) -> None:
        from connectors import redis

        client = redis.redis_client(self.settings)
        try:
            client.flushdb()
        finally:
            client.close()

    def remove_data_dirs(self) -> None:
        for app_id in self.app_ids:
            shutil.rmtree(ROOT / f"{app_id}-data", ignore_errors=True)
