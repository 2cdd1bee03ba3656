"""What the handlers of one operator run share (kept in kopf's memo): the API client, settings, the watch cache,
the work queue of ImageBuilds, registry sessions and the event recorder."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kiln import API_VERSION
from kiln.build.outcomes import true_condition
from kiln.build.render import short_name
from kiln.build.status import BUILDING, PENDING
from kiln.clients.events import Recorder
from kiln.clients.kube import Kube, path
from kiln.clients.registry_sessions import Registries
from kiln.clients.watch_cache import MANAGED, Cache, Reader, own_secret
from kiln.controller.runs import Runs
from kiln.controller.workqueue import Key, WorkQueue
from kiln.spec.settings import Settings


@dataclass
class Runtime:
    kube: Kube
    settings: Settings
    cache: Cache = field(default_factory=Cache)
    # One reconcile at a time per ImageBuild, whichever watch (its own, its Jobs', its Pods') triggered it.
    queue: WorkQueue = field(init=False)
    registries: Registries = field(init=False)
    recorder: Recorder = field(init=False)  # Kubernetes Events, posted in the background
    runs: Runs = field(init=False)  # builds on warm builders, which have no Job
    _pod_states: dict[tuple[str, str], tuple] = field(default_factory=dict)
    _job_states: dict[tuple[str, str], tuple] = field(default_factory=dict)
    events: int = 0  # watch events handled so far: whether anything happened since the last resync round

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.settings.max_concurrent_reconciles)
        self.registries = Registries(self.settings)
        self.recorder = Recorder(self.kube)
        self.runs = Runs(self.kube, self.settings)

    def handling(self, kwargs: Mapping) -> None:
        """A watch event reached a handler, whose keyword arguments carry kopf's indexes."""
        self.events += 1
        self.cache.bind(kwargs)

    async def list_at_start(self) -> None:
        """Before any watch: kiln's own Secrets, which no watch brings (a build that ended while the operator was
        down still has one to delete); and every ImageBuild, so that the first builds reconciled know who else
        is in their namespace's line. One listing of each per served namespace, or one in all."""
        for namespace in self.settings.namespaces or (None,):
            for secret in await self.kube.list(path("v1", "secrets", namespace), MANAGED):
                if own_secret(secret):
                    self.cache.made_secret(secret["metadata"]["namespace"], secret)
            for build in await self.kube.list(path(API_VERSION, "imagebuilds", namespace)):
                if (build.get("status") or {}).get("phase") in (None, PENDING, BUILDING):  # the rest hold no place
                    self.cache.listed_build(build)

    def pod_state_changed(self, namespace: str, pod: Mapping) -> bool:
        """Whether a pod's container started, waits for another reason, or ended since kiln last looked."""
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        state = tuple((s.get("name"), *sorted((s.get("state") or {}).keys()),
                       ((s.get("state") or {}).get("waiting") or {}).get("reason")) for s in statuses)
        return _news(self._pod_states, (namespace, pod["metadata"]["name"]),
                     (state, (pod.get("metadata") or {}).get("deletionTimestamp")))

    def pod_gone(self, namespace: str, name: str) -> None:
        self._pod_states.pop((namespace, name), None)

    def job_created(self, namespace: str, job: Mapping) -> None:
        """kiln made this Job: it exists until its watch shows it, and its echo is no news."""
        self.cache.created(namespace, job)
        self._job_states[(namespace, job["metadata"]["name"])] = _job_state(job)

    def job_state_changed(self, namespace: str, job: Mapping, event: str) -> bool:
        """Whether a Job concluded, is being deleted or is gone, or is one kiln did not know: the echo of kiln's
        own create and the Job controller's progress reports (startTime, active, ready) change nothing kiln decides."""
        if event == "DELETED":
            self.job_gone(namespace, job["metadata"]["name"])
            return True
        return _news(self._job_states, (namespace, job["metadata"]["name"]), _job_state(job))

    def job_gone(self, namespace: str, name: str) -> None:
        self._job_states.pop((namespace, name), None)

    def reader(self) -> Reader:
        return Reader(self.kube, self.cache)

    def own_write(self, key: Key, version: str | None) -> bool:
        """Is this version of the ImageBuild the one kiln's own last status write made?"""
        return self.cache.echo("ImageBuild", *key, version)

    def forget(self, key: Key) -> None:
        """An ImageBuild is gone: nothing of it is kept."""
        self.cache.build_gone(*key)
        self.runs.forget(key[0], short_name(key[1]))
        self.cache.credentials.pop((key[0], short_name(key[1])), None)  # the garbage collector takes its Secrets
        self.queue.forget(key)


def _job_state(job: Mapping) -> tuple:
    concluded = next((kind for kind in ("Complete", "Failed") if true_condition(job, kind)), None)
    return concluded, bool((job.get("metadata") or {}).get("deletionTimestamp"))


def _news(states: dict, key: tuple, state: tuple) -> bool:
    """Remember an object's state; whether it differs from the one remembered before."""
    if states.get(key) == state:
        return False
    states[key] = state
    return True
