"""What the watches delivered, so that a reconcile reads no object the operator already holds.

kopf's indexes (declared in handlers.py) keep the latest body of every RegistryLogin, Job and Pod kiln
serves, and of the login Secrets labelled kiln.dev/registry-login=true: whole for what kiln reads whole,
only metadata and status of Jobs and Pods (their pod specs are most of their size, and memory per build is
what the bench measures). ImageBuilds are kept by their own handler instead, which runs for each of their
events anyway: a kopf index would cost a second handler call on every event of the busiest kind. What kopf's
index gave for free, every build known before any handler runs, comes from one listing at start: its unfinished
builds are kept apart until the watch shows each (a build deleted meanwhile never shows).

Kept here too, from kiln's own writes rather than a watch: the ImageBuild as kiln's own status write
returned it; Jobs kiln just created (an expectation, as the Job controller keeps for its pods), so that a
Job the watch has not shown yet is not taken for one deleted by hand; and which of its own Secrets exist
(what it created and has not deleted, and what one listing at start found), so that no watch streams every
build's credentials back to the operator. Writes still go to the API server, whose 409 decides whether
something already exists.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kiln.clients.kube import Kube, KubeError, labels_match, path
from kiln.spec import labels

# kopf indexes (handlers.py) and their keys: what a reconcile of one build reads is found at once, not by a
# walk of its namespace, so a build costs the same in a namespace of ten builds or ten thousand.
# The handlers declare them with these ids (kopf passes an index to handlers under its id).
LOGINS_BY_NAMESPACE = "logins_by_namespace"  # namespace
JOBS_BY_BUILD, PODS_BY_BUILD = "jobs_by_build", "pods_by_build"  # (namespace, the kiln.dev/imagebuild label)
SECRETS_BY_NAME = "secrets_by_name"  # a login's Secret: (namespace, name)
INDEXES = (LOGINS_BY_NAMESPACE, JOBS_BY_BUILD, PODS_BY_BUILD, SECRETS_BY_NAME)
BUILD_LABEL = labels.IMAGEBUILD
MANAGED = labels.MANAGED
EXPECTATION_SECONDS = 60.0  # a created Job the watch has not shown within this is looked at as it is
NAMESPACE_SECONDS = 30.0  # a namespace's labels (its builds' defaults) are read again after this
LOG = logging.getLogger("kiln.cache")


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SHARED_UP_TO = 64  # characters: names of fields, reasons, labels; not messages or logs


def _copy(value):
    """A private copy in which field names and short values are shared strings: a thousand builds repeat the
    same few hundred of them, which Python would otherwise hold once per object."""
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, str) and len(value) <= SHARED_UP_TO:
        return sys.intern(value)
    return value


def _metadata(obj: Mapping) -> dict:
    """Metadata without what kiln never reads and is often most of an object: the API server's managedFields
    and the copy of the whole object `kubectl apply` leaves in an annotation."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    if LAST_APPLIED in (meta.get("annotations") or {}):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED}
    return _copy(meta)


def body(obj: Mapping) -> dict:
    """A plain, private copy of a watched object, for an index."""
    return {**_copy({k: v for k, v in obj.items() if k != "metadata"}), "metadata": _metadata(obj)}


def job_body(obj: Mapping) -> dict:
    """What kiln reads of a Job: its metadata and status. The pod template is most of a Job and never read."""
    return {"metadata": _metadata(obj), "status": _copy(obj.get("status") or {})}


def pod_body(obj: Mapping) -> dict:
    """What kiln reads of a Pod: metadata, phase, conditions and the containers' states (digest, exit, log)."""
    status = obj.get("status") or {}
    kept = {k: status[k] for k in ("phase", "reason", "message", "conditions") if k in status}
    kept["containerStatuses"] = [{"name": c.get("name"), "state": c.get("state") or {}}
                                 for c in status.get("containerStatuses") or []]
    return {"metadata": _metadata(obj), "status": _copy(kept)}


def build_key(namespace: str, obj: Mapping) -> tuple[str, str | None]:
    """Where a Job, Pod or build Secret of kiln's is kept: with the other children of its ImageBuild."""
    return namespace, ((obj.get("metadata") or {}).get("labels") or {}).get(BUILD_LABEL)


def own_secret(obj: Mapping) -> bool:
    """One of the Secrets kiln makes for its builds (an older kiln labelled them as login Secrets too)."""
    return labels_match(obj, MANAGED) and BUILD_LABEL in ((obj.get("metadata") or {}).get("labels") or {})


def _version(obj: dict | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Cache:
    indexes: dict[str, Mapping] = field(default_factory=dict)
    # namespace -> name -> the ImageBuild as its watch last delivered it
    watched_builds: dict[str, dict[str, dict]] = field(default_factory=dict)
    # namespace -> name -> an ImageBuild of kiln's listing at start that its watch has not delivered yet: counted
    # in its namespace's line, never reconciled (it may be gone); dropped at the first resync round
    listed_builds: dict[str, dict[str, dict]] = field(default_factory=dict)
    # (kind, namespace, name) -> the object as kiln's own last status write returned it
    written: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    # (namespace, build label) -> Job name -> (when created, Job): Jobs kiln made that the watch has not shown yet
    expected: dict[tuple[str, str | None], dict[str, tuple[float, dict]]] = field(default_factory=dict)
    # (namespace, build label) -> Secret name -> its metadata: kiln's own Secrets that exist
    credentials: dict[tuple[str, str | None], dict[str, dict]] = field(default_factory=dict)
    # namespace -> (when read, its labels): no watch delivers Namespaces (kiln may serve a few)
    namespaces: dict[str, tuple[float, dict]] = field(default_factory=dict)

    def bind(self, kwargs: Mapping) -> None:
        """Keep kopf's indexes (every handler gets them as keyword arguments)."""
        for name in INDEXES:
            if name in kwargs and name not in self.indexes:
                self.indexes[name] = kwargs[name]

    @property
    def ready(self) -> bool:
        return all(name in self.indexes for name in INDEXES)

    def _at(self, index: str, key) -> list[dict]:
        found = self.indexes.get(index) or {}
        return list(found[key]) if key in found else []

    def _in_namespace(self, index: str, namespace: str) -> list[dict]:
        """Everything of a namespace in an index keyed per build: a walk, for what is asked rarely."""
        found = self.indexes.get(index) or {}
        return [obj for key in list(found) if key[0] == namespace for obj in list(found[key])]

    def wrote(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        self.written[(kind, meta["namespace"], meta["name"])] = obj

    def _newest(self, kind: str, watched: dict) -> dict:
        """What the watch delivered, or kiln's own later write of it."""
        meta = watched["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        written = self.written.get(key)
        if written is None:
            return watched
        if _version(written) > _version(watched):
            return written
        if _version(watched) > _version(written):
            del self.written[key]  # past kiln's write (whose echo own_write drops): one copy of each is enough
        return watched

    def saw_build(self, obj: Mapping) -> None:
        """The watch delivered an ImageBuild (not its deletion)."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.watched_builds.setdefault(namespace, {})[name] = body(obj)
        _pop(self.listed_builds, namespace, name)

    def listed_build(self, obj: Mapping) -> None:
        """kiln's listing at start (before any watch) found this ImageBuild."""
        self.listed_builds.setdefault(obj["metadata"]["namespace"], {})[obj["metadata"]["name"]] = body(obj)

    def unseen_gone(self) -> None:
        """A build of kiln's listing at start that no watch event has shown since was deleted before kopf's own
        listing (which comes seconds after kiln's)."""
        self.listed_builds.clear()

    def build_gone(self, namespace: str, name: str) -> None:
        _pop(self.watched_builds, namespace, name)
        _pop(self.listed_builds, namespace, name)
        self.forget("ImageBuild", namespace, name)

    def everything(self, kind: str) -> list[dict]:
        """Every ImageBuild or RegistryLogin the watches delivered, in every namespace served."""
        if kind == "ImageBuild":
            return [self._newest(kind, obj) for builds in list(self.watched_builds.values()) for obj in list(builds.values())]
        index = self.indexes.get(LOGINS_BY_NAMESPACE) or {}
        return [self._newest(kind, obj) for key in list(index) for obj in list(index[key])]

    def build(self, namespace: str, name: str) -> dict | None:
        """None when the watch has not got it (deleted, or not delivered yet): the watch decides what exists."""
        watched = self.watched_builds.get(namespace, {}).get(name)
        return self._newest("ImageBuild", watched) if watched else None

    def builds(self, namespace: str, listed: bool = False) -> list[dict]:
        """The ImageBuilds of a namespace the watch delivered; with listed, also those only kiln's listing at
        start has shown yet (who else is in a namespace's line, right after a start)."""
        found = [self._newest("ImageBuild", b) for b in list(self.watched_builds.get(namespace, {}).values())]
        return found + list(self.listed_builds.get(namespace, {}).values()) if listed else found

    def logins(self, namespace: str) -> list[dict]:
        return [self._newest("RegistryLogin", b) for b in self._at(LOGINS_BY_NAMESPACE, namespace)]

    def login(self, namespace: str, name: str) -> dict | None:
        """One login: kiln's own later write of it only for that one, not for the whole namespace."""
        watched = next((o for o in self._at(LOGINS_BY_NAMESPACE, namespace) if o["metadata"]["name"] == name), None)
        return self._newest("RegistryLogin", watched) if watched else None

    def jobs(self, namespace: str, build: str | None = None) -> list[dict]:
        """Kiln's Jobs of one build (by its kiln.dev/imagebuild label) or of the whole namespace, with those
        kiln just created and the watch does not show yet."""
        watched = self._at(JOBS_BY_BUILD, (namespace, build)) if build else self._in_namespace(JOBS_BY_BUILD, namespace)
        names = {job["metadata"]["name"] for job in watched}
        now = time.monotonic()
        for key in [(namespace, build)] if build else [key for key in self.expected if key[0] == namespace]:
            pending = self.expected.get(key) or {}
            for name, (when, job) in list(pending.items()):
                if name in names or now - when > EXPECTATION_SECONDS:  # the watch shows it, or decides now
                    del pending[name]
                else:
                    watched.append(job)
            if not pending:
                self.expected.pop(key, None)
        return watched

    def pods(self, namespace: str, build: str | None = None) -> list[dict]:
        return self._at(PODS_BY_BUILD, (namespace, build)) if build else self._in_namespace(PODS_BY_BUILD, namespace)

    def secrets(self, namespace: str, build: str) -> list[dict]:
        """A build's own Secrets: those kiln made or found at its start, and has not deleted since."""
        return list(self.credentials.get((namespace, build), {}).values())

    def secret(self, namespace: str, name: str) -> dict | None:
        """A login's Secret, by name."""
        return next(iter(self._at(SECRETS_BY_NAME, (namespace, name))), None)

    def made_secret(self, namespace: str, secret: Mapping) -> None:
        """kiln created one of its own Secrets, or found it (at its start, or as a 409)."""
        key = build_key(namespace, secret)
        self.credentials.setdefault(key, {})[secret["metadata"]["name"]] = {"metadata": _metadata(secret)}

    def deleted_secret(self, namespace: str, name: str) -> None:
        for key in [key for key in self.credentials if key[0] == namespace]:
            if self.credentials[key].pop(name, None) is not None and not self.credentials[key]:
                del self.credentials[key]

    def created(self, namespace: str, job: dict) -> None:
        self.expected.setdefault(build_key(namespace, job), {})[job["metadata"]["name"]] = (time.monotonic(), job_body(job))

    def deleted(self, namespace: str, job_name: str) -> None:
        for key in [key for key in self.expected if key[0] == namespace]:
            self.expected[key].pop(job_name, None)

    def echo(self, kind: str, namespace: str, name: str, version: str | None) -> bool:
        """Is this the watch's echo of kiln's own last write? Then the watch holds it, and so kiln need not."""
        written = self.written.get((kind, namespace, name))
        if written is None or written["metadata"].get("resourceVersion") != version:
            return False
        del self.written[(kind, namespace, name)]
        return True

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.written.pop((kind, namespace, name), None)


def _pop(nested: dict[str, dict[str, dict]], namespace: str, name: str) -> None:
    inner = nested.get(namespace)
    if inner is not None and inner.pop(name, None) is not None and not inner:
        del nested[namespace]


class Reader:
    """What a reconcile reads: what the watches delivered; only what no watch delivers (nodes, a Secret without
    the label) is asked for."""

    def __init__(self, kube: Kube, cache: Cache):
        self.kube, self.cache = kube, cache

    async def build(self, namespace: str, name: str) -> dict | None:
        return self.cache.build(namespace, name)

    async def builds(self, namespace: str) -> list[dict]:
        """Every build of a namespace that may hold a place in its line."""
        return self.cache.builds(namespace, listed=True)

    async def logins(self, namespace: str) -> list[dict]:
        return self.cache.logins(namespace)

    async def jobs(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [job for job in self.cache.jobs(namespace, labels.get(BUILD_LABEL)) if labels_match(job, labels)]

    async def pods(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [pod for pod in self.cache.pods(namespace, labels.get(BUILD_LABEL)) if labels_match(pod, labels)]

    async def secrets(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        """A build's own Secrets (labels name the build)."""
        return [secret for secret in self.cache.secrets(namespace, labels[BUILD_LABEL]) if labels_match(secret, labels)]

    async def secret(self, namespace: str, name: str) -> dict | None:
        """A labelled Secret from the watch; one without the label from the API server."""
        return self.cache.secret(namespace, name) or await self.kube.get(path("v1", "secrets", namespace, name))

    async def secret_metadata(self, namespace: str, name: str) -> dict | None:
        """A Secret's metadata (whether it opted in), without reading what it holds."""
        watched = self.cache.secret(namespace, name)
        if watched is not None:
            return {"metadata": watched["metadata"]}
        found = await self.kube.get(path("v1", "secrets", namespace, name), metadata_only=True)
        return None if found is None else {"metadata": found.get("metadata") or {}}

    async def nodes(self) -> list[dict]:
        return await self.kube.list(path("v1", "nodes"))

    async def warm_by_default(self, namespace: str) -> bool:
        """Whether the namespace makes warm builders its builds' default (labels.DEFAULT_BUILDER=warm), as read
        within the last NAMESPACE_SECONDS. One kiln may not read (RBAC) has no default."""
        read, found = self.cache.namespaces.get(namespace, (0.0, {}))
        if time.monotonic() - read > NAMESPACE_SECONDS:
            try:
                found = ((await self.kube.get(path("v1", "namespaces", name=namespace), metadata_only=True) or {})
                         .get("metadata") or {}).get("labels") or {}
            except KubeError as exc:
                if exc.status != 403:
                    raise
                LOG.warning("namespace %s: kiln may not read it, so its builds have no default builder", namespace)
                found = {}
            self.cache.namespaces[namespace] = (time.monotonic(), found)
        return found.get(labels.DEFAULT_BUILDER) == "warm"
