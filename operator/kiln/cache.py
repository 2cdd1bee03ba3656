"""What the watches delivered, so that a reconcile reads no object the operator already holds.

kopf's indexes (declared in handlers.py) keep the latest body of every ImageBuild, RegistryLogin, Job
and Pod kiln serves, and of the Secrets labelled kiln.dev/registry-login=true. Two things a watch
shows late are kept here too: the ImageBuild as kiln's own status write returned it, and Jobs kiln
just created (an expectation, as the Job controller keeps for its pods), so that a Job the watch has
not shown yet is not taken for one deleted by hand. Writes still go to the API server, whose 409
decides whether something already exists.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kiln.apply import Kube, labels_match, path

INDEXES = ("builds_by_namespace", "logins_by_namespace", "jobs_by_namespace", "pods_by_namespace",
           "secrets_by_namespace")
EXPECTATION_SECONDS = 60.0  # a created Job the watch has not shown within this is looked at as it is


def body(obj: Mapping) -> dict:
    """A plain, private copy of a watched object, for an index."""
    return copy.deepcopy(dict(obj))


def _version(obj: dict | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Cache:
    indexes: dict[str, Mapping] = field(default_factory=dict)
    # (kind, namespace, name) -> the object as kiln's own last status write returned it
    written: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    expected: dict[tuple[str, str], tuple[float, dict]] = field(default_factory=dict)  # (namespace, Job) -> (when, Job)

    def bind(self, kwargs: Mapping) -> None:
        """Keep kopf's indexes (every handler gets them as keyword arguments)."""
        for name in INDEXES:
            if name in kwargs and name not in self.indexes:
                self.indexes[name] = kwargs[name]

    @property
    def ready(self) -> bool:
        return all(name in self.indexes for name in INDEXES)

    def _all(self, index: str, namespace: str) -> list[dict]:
        found = self.indexes.get(index) or {}
        return list(found[namespace]) if namespace in found else []

    def wrote(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        self.written[(kind, meta["namespace"], meta["name"])] = obj

    def _newest(self, kind: str, watched: dict) -> dict:
        """What the watch delivered, or kiln's own later write of it."""
        meta = watched["metadata"]
        written = self.written.get((kind, meta["namespace"], meta["name"]))
        return written if _version(written) > _version(watched) else watched

    def everything(self, kind: str) -> list[dict]:
        """Every ImageBuild or RegistryLogin the watches delivered, in every namespace served."""
        index = self.indexes.get({"ImageBuild": "builds_by_namespace", "RegistryLogin": "logins_by_namespace"}[kind]) or {}
        return [self._newest(kind, obj) for namespace in list(index) for obj in list(index[namespace])]

    def build(self, namespace: str, name: str) -> dict | None:
        """None when the watch has not got it (deleted, or not delivered yet): the watch decides what exists."""
        return next((b for b in self.builds(namespace) if b["metadata"]["name"] == name), None)

    def builds(self, namespace: str) -> list[dict]:
        return [self._newest("ImageBuild", b) for b in self._all("builds_by_namespace", namespace)]

    def logins(self, namespace: str) -> list[dict]:
        return [self._newest("RegistryLogin", b) for b in self._all("logins_by_namespace", namespace)]

    def login(self, namespace: str, name: str) -> dict | None:
        return next((login for login in self.logins(namespace) if login["metadata"]["name"] == name), None)

    def jobs(self, namespace: str) -> list[dict]:
        """The namespace's Jobs of kiln, with those kiln just created and the watch does not show yet."""
        watched = self._all("jobs_by_namespace", namespace)
        names = {job["metadata"]["name"] for job in watched}
        now = time.monotonic()
        for (ns, name), (when, job) in list(self.expected.items()):
            if name in names or now - when > EXPECTATION_SECONDS:
                del self.expected[(ns, name)]
            elif ns == namespace:
                watched.append(job)
        return watched

    def pods(self, namespace: str) -> list[dict]:
        return self._all("pods_by_namespace", namespace)

    def secrets(self, namespace: str) -> list[dict]:
        return self._all("secrets_by_namespace", namespace)

    def secret(self, namespace: str, name: str) -> dict | None:
        return next((s for s in self.secrets(namespace) if s["metadata"]["name"] == name), None)

    def created(self, namespace: str, job: dict) -> None:
        self.expected[(namespace, job["metadata"]["name"])] = (time.monotonic(), job)

    def deleted(self, namespace: str, job_name: str) -> None:
        self.expected.pop((namespace, job_name), None)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.written.pop((kind, namespace, name), None)


class Reader:
    """What a reconcile reads: what the watches delivered; only what no watch delivers (nodes, a Secret without
    the label) is asked for."""

    def __init__(self, kube: Kube, cache: Cache):
        self.kube, self.cache = kube, cache

    async def build(self, namespace: str, name: str) -> dict | None:
        return self.cache.build(namespace, name)

    async def builds(self, namespace: str) -> list[dict]:
        return self.cache.builds(namespace)

    async def logins(self, namespace: str) -> list[dict]:
        return self.cache.logins(namespace)

    async def jobs(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [job for job in self.cache.jobs(namespace) if labels_match(job, labels)]

    async def pods(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [pod for pod in self.cache.pods(namespace) if labels_match(pod, labels)]

    async def secrets(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [secret for secret in self.cache.secrets(namespace) if labels_match(secret, labels)]

    async def secret(self, namespace: str, name: str) -> dict | None:
        """A labelled Secret from the watch; one without the label from the API server."""
        return self.cache.secret(namespace, name) or await self.kube.get(path("v1", "secrets", namespace, name))

    async def nodes(self) -> list[dict]:
        return await self.kube.list(path("v1", "nodes"))
