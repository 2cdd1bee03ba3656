"""kopf entry points: decorators and one-line delegations. The work lives in builds and logins.

Every handler is level-triggered: it reads the current state and moves it one step,
so any event (ImageBuild, its Jobs and Pods, RegistryLogins, their Secrets) or the
periodic resync may run it, any number of times, in any order.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging

import kopf

from kiln import metrics
from kiln.build.decide import settled
from kiln.build.logins import WATCHED_LABEL
from kiln.build.status import Phase
from kiln.clients import kube, watch_cache
from kiln.controller import builds, gather, logins
from kiln.controller.runtime import Runtime
from kiln.spec.settings import Settings

IMAGEBUILDS = ("kiln.dev", "v1alpha1", "imagebuilds")
LOGINS = ("kiln.dev", "v1alpha1", "registrylogins")
# Login Secrets. kiln's own carry no such label (a listing at start and its own writes say which exist), but
# an older kiln's did, and an emulator without label selectors streams them all: they are no login's.
LOGIN_SECRETS = {WATCHED_LABEL: "true", watch_cache.BUILD_LABEL: kopf.ABSENT}


def quiet_kopf_objects() -> None:
    """kopf's per-object INFO is one "Handler 'x' succeeded." for every watch event: thousands of lines a minute
    at scale, and a log record made for each, which cost more CPU than the reconcile; the health endpoint logs
    every probe. Off unless `kopf run --verbose/--debug` asked for everything; kopf's warnings and errors still
    show, and kiln's own INFO lines go to the "kiln" loggers."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line for every probe of /healthz


class NoDiffBase(kopf.DiffBaseStorage):
    """kiln's handlers are all on.event, which get no diff; kopf would still deep-copy every event's
    object to diff it against the last one handled. Nothing is kept, so nothing is copied."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


# Tried again in seconds, not kopf's minute, when the listing of kiln's own Secrets meets an API server
# still starting. It may run again from the top: what it starts (the metrics server, tasks) comes last.
@kopf.on.startup(backoff=2)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # kopf's own bookkeeping goes to annotations: status belongs to users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    quiet_kopf_objects()
    # Only what is kiln's streams in: the API server filters Jobs, Pods and Secrets for the operator,
    # so its memory and work follow kiln's objects, not the cluster's size.
    managed = ",".join(f"{key}={value}" for key, value in watch_cache.MANAGED.items())
    # Keys are (group, plural): kopf reads one string as one name, and "batch/jobs" names no resource.
    settings.watching.label_selectors["batch", "jobs"] = managed
    settings.watching.label_selectors["", "pods"] = managed
    settings.watching.label_selectors["", "secrets"] = f"{WATCHED_LABEL}=true"
    kube.load_config()
    memo.runtime = Runtime(kube.Kube(), Settings.from_env())
    await memo.runtime.list_at_start()
    memo.metrics = metrics.serve(memo.runtime.settings.metrics_port, memo.runtime.settings.metrics_address)
    if memo.runtime.settings.namespaces:
        # Serving named namespaces: nothing to discover, so no namespace or CRD scanning (and no RBAC for it).
        settings.scanning.disabled = True
    memo.resync = asyncio.create_task(_resync(memo, logging.getLogger("kiln.resync")))
    memo.recorder = asyncio.create_task(memo.runtime.recorder.run())
    memo.builders = asyncio.create_task(memo.runtime.runs.scale_idle())


async def _resync(memo: kopf.Memo, logger: logging.Logger) -> None:
    """Every object again, now and then: re-verification, and retries after transient trouble.

    One loop for the operator instead of kopf timers, which would put a finalizer on every
    object and block its deletion whenever the operator is down. It walks what the watches
    delivered: a round costs no API request, and a finished build nothing at all.
    """
    runtime: Runtime = memo.runtime
    collected_after = -1
    while True:
        await asyncio.sleep(runtime.settings.resync_interval)
        known_logins, known_builds = runtime.cache.everything("RegistryLogin"), runtime.cache.everything("ImageBuild")
        for obj in known_logins:
            try:
                await logins.reconcile_login(runtime, obj)
            except Exception as exc:  # one object's trouble must not keep the others waiting
                logger.warning("resync of RegistryLogin %s/%s failed: %s: %s", obj["metadata"]["namespace"],
                               obj["metadata"]["name"], type(exc).__name__, exc)
        for obj in known_builds:
            if not settled(obj):  # a finished build waits for a change of its own, which its watch delivers
                await builds.reconcile(runtime, obj["metadata"]["namespace"], obj["metadata"]["name"], logger)
        runtime.cache.unseen_gone()
        # kopf's per-event objects form reference cycles; after a burst of events (builds, or the first listing
        # after a start) they would wait for a full collection that a heap of long-lived cached objects makes rare,
        # and hold the memory meanwhile; and what is freed between the objects kept would stay with the process,
        # counted against the pod's memory limit. Only after events, though: a full collection of a big heap is not
        # free, and an idle operator costs nothing.
        if runtime.events != collected_after:
            collected_after = runtime.events
            gc.collect()
            _give_back_freed_memory()
        queued = sum(gather.queued(o) for o in known_builds)
        metrics.BUILDS_QUEUED.set(queued)
        metrics.BUILDS_RUNNING.set(sum((o.get("status") or {}).get("phase") in (Phase.PENDING, Phase.BUILDING)
                                       for o in known_builds) - queued)


def _give_back_freed_memory() -> None:
    """Free pages of the C heap go back to the system (glibc, as in kiln's image; elsewhere nothing happens)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@kopf.on.login()
def login(**_) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(**kube.connection())


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_) -> None:
    memo.resync.cancel()
    memo.builders.cancel()
    memo.runtime.queue.shut_down()
    await memo.runtime.recorder.flush(timeout=5)
    memo.recorder.cancel()
    await memo.runtime.registries.close()
    await memo.runtime.runs.egress.close()
    if memo.metrics:
        memo.metrics.shutdown()
    await memo.runtime.kube.close()


# Indexes are async, though they never wait: kopf runs a plain function in a thread, a hop that costs more
# than the index itself.
@kopf.index(*LOGINS)
async def logins_by_secret(namespace: str, name: str, spec: kopf.Spec, **_) -> dict:
    return {(namespace, (spec.get("secretRef") or {}).get("name")): name}


# What reconciles read instead of the API server (watch_cache.py): the watches fill these before any handler runs.
# (ImageBuilds are kept by imagebuild_changed: see watch_cache.py.)
@kopf.index(*LOGINS, id=watch_cache.LOGINS_BY_NAMESPACE)
async def logins_by_namespace(namespace: str, body: kopf.Body, **_) -> dict:
    return {namespace: watch_cache.body(body)}


@kopf.index("batch", "v1", "jobs", labels=watch_cache.MANAGED, id=watch_cache.JOBS_BY_BUILD)
async def jobs_by_build(namespace: str, body: kopf.Body, **_) -> dict:
    return {watch_cache.build_key(namespace, body): watch_cache.job_body(body)}


@kopf.index("", "v1", "pods", labels=watch_cache.MANAGED, id=watch_cache.PODS_BY_BUILD)
async def pods_by_build(namespace: str, body: kopf.Body, **_) -> dict:
    return {watch_cache.build_key(namespace, body): watch_cache.pod_body(body)}


@kopf.index("", "v1", "secrets", labels=LOGIN_SECRETS, id=watch_cache.SECRETS_BY_NAME)
async def secrets_by_name(namespace: str, name: str, body: kopf.Body, **_) -> dict:
    return {(namespace, name): watch_cache.body(body)}


@kopf.on.event(*IMAGEBUILDS)
async def imagebuild_changed(type: str, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
                             logger: logging.Logger, **kwargs) -> None:
    memo.runtime.handling(kwargs)
    if type == "DELETED":  # the children go with their owner reference
        memo.runtime.forget((namespace, name))
        return
    memo.runtime.cache.saw_build(body)
    if memo.runtime.own_write((namespace, name), body.metadata.get("resourceVersion")):
        return  # the echo of kiln's own status write: nothing changed that kiln did not know
    if settled(body):
        return  # finished, and neither edited nor given a new rebuild token: a restart lists a thousand such
    await builds.reconcile(memo.runtime, namespace, name, logger)


def _owner(obj: kopf.Body | dict) -> str | None:
    return next((ref["name"] for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
                 if ref.get("kind") == "ImageBuild" and ref.get("controller")), None)


def _done_with(runtime: Runtime, namespace: str, owner: str | None) -> bool:
    """Whether nothing a Job or Pod does matters, and nothing of it is remembered: its ImageBuild has its result
    recorded (its old children's comings and goings change nothing: a restart lists them all, the garbage
    collector deletes them), or is not known: deleted, or, right after a start, not delivered yet, and then its
    own event reconciles it, reading its children from their indexes."""
    build = runtime.cache.build(namespace, owner) if owner else None
    return build is None or settled(build)


@kopf.on.event("batch", "v1", "jobs", labels=watch_cache.MANAGED)
async def job_changed(type: str, body: kopf.Body, namespace: str, memo: kopf.Memo, logger: logging.Logger,
                      **kwargs) -> None:
    runtime: Runtime = memo.runtime
    runtime.handling(kwargs)
    owner = _owner(body)
    if _done_with(runtime, namespace, owner):
        runtime.job_gone(namespace, body["metadata"]["name"])
    elif runtime.job_state_changed(namespace, body, type):
        await builds.reconcile(runtime, namespace, owner, logger)


@kopf.on.event("", "v1", "pods", labels=watch_cache.MANAGED)
async def pod_changed(type: str, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo,
                      logger: logging.Logger, **kwargs) -> None:
    """A pod matters when its container starts, waits on something (an image pull), or ends; its Job says the rest,
    also when the pod is deleted."""
    runtime: Runtime = memo.runtime
    runtime.handling(kwargs)
    job = next((j for j in runtime.cache.jobs(*watch_cache.build_key(namespace, body))
                if j["metadata"]["name"] == labels.get("job-name")), None)
    owner = _owner(job) if job else None
    if type == "DELETED" or _done_with(runtime, namespace, owner):
        runtime.pod_gone(namespace, body["metadata"]["name"])
    elif runtime.pod_state_changed(namespace, body):
        await builds.reconcile(runtime, namespace, owner, logger)


@kopf.on.event(*LOGINS)
async def login_changed(type: str, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs) -> None:
    memo.runtime.handling(kwargs)
    if type == "DELETED":
        memo.runtime.cache.forget("RegistryLogin", body.metadata["namespace"], body.metadata["name"])
    else:
        await builds.login_changed(memo.runtime, dict(body), logger)


@kopf.on.event("", "v1", "secrets", labels=LOGIN_SECRETS)
async def secret_changed(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger,
                         logins_by_secret: kopf.Index, **kwargs) -> None:
    memo.runtime.handling(kwargs)
    for login in list(logins_by_secret.get((namespace, name), [])):  # rotation: re-verify without a restart
        obj = memo.runtime.cache.login(namespace, login)
        if obj:
            await builds.login_changed(memo.runtime, obj, logger)
