"""What the handlers of one operator run share (kept in kopf's memo): the API client, settings,
one lock per ImageBuild, and the timers that look at an object again later."""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from kiln import API_VERSION
from kiln.build.outcomes import true_condition
from kiln.build.render import short_name
from kiln.build.status import BUILDING, PENDING
from kiln.clients.events import Recorder
from kiln.clients.kube import Kube, path
from kiln.clients.registry_sessions import Registries
from kiln.clients.watch_cache import MANAGED, Cache, Reader, own_secret
from kiln.spec.settings import Settings

Key = tuple[str, str]  # (namespace, name)
# A failed reconcile is tried again after 1s, 2s, 4s ... at most every 5 minutes.
RETRY_BASE, RETRY_CAP = 1.0, 300.0


@dataclass
class Runtime:
    kube: Kube
    settings: Settings
    # One reconcile at a time per ImageBuild, whichever watch (its own, its Jobs', its Pods') triggered it.
    locks: dict[Key, asyncio.Lock] = field(default_factory=lambda: collections.defaultdict(asyncio.Lock))
    failures: dict[Key, int] = field(default_factory=dict)
    cache: Cache = field(default_factory=Cache)
    registries: Registries = field(init=False)
    recorder: Recorder = field(init=False)  # Kubernetes Events, posted in the background
    _pod_states: dict[tuple[str, str], tuple] = field(default_factory=dict)
    _job_states: dict[tuple[str, str], tuple] = field(default_factory=dict)
    events: int = 0  # watch events handled so far: whether anything happened since the last resync round
    reconcile_slots: asyncio.Semaphore = field(init=False)
    _timers: dict[Key, tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reconcile_slots = asyncio.Semaphore(self.settings.max_concurrent_reconciles)
        self.registries = Registries(self.settings)
        self.recorder = Recorder(self.kube)

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

    def retry_delay(self, key: Key) -> float:
        """The next delay for an object whose reconcile failed again (exponential, capped)."""
        self.failures[key] = self.failures.get(key, 0) + 1
        return min(RETRY_BASE * 2 ** (self.failures[key] - 1), RETRY_CAP)

    def later(self, key: Key, delay: float, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` for this object after `delay` seconds; an earlier timer for it wins over a later one."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending and not pending[1].cancelled() and pending[0] <= when:
            return
        if pending:
            pending[1].cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            loop.create_task(run())

        self._timers[key] = (when, loop.call_later(delay, fire))

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
        self.cache.credentials.pop((key[0], short_name(key[1])), None)  # the garbage collector takes its Secrets
        self.failures.pop(key, None)
        self.locks.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending:
            pending[1].cancel()

    def cancel_timers(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()


def _job_state(job: Mapping) -> tuple:
    concluded = next((kind for kind in ("Complete", "Failed") if true_condition(job, kind)), None)
    return concluded, bool((job.get("metadata") or {}).get("deletionTimestamp"))


def _news(states: dict, key: tuple, state: tuple) -> bool:
    """Remember an object's state; whether it differs from the one remembered before."""
    if states.get(key) == state:
        return False
    states[key] = state
    return True
