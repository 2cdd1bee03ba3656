"""kopf entry points: decorators and one-line delegations. The work lives in handle_build and handle_login.

Every handler is level-triggered: it reads the current state and moves it one step,
so any event (ImageBuild, its Jobs and Pods, RegistryLogins, their Secrets) or the
periodic resync may run it, any number of times, in any order.
"""
from __future__ import annotations

import asyncio
import logging

import kopf

from kiln import apply, handle_build, handle_login, metrics
from kiln.runtime import Runtime
from kiln.settings import Settings

IMAGEBUILDS = ("kiln.dev", "v1alpha1", "imagebuilds")
LOGINS = ("kiln.dev", "v1alpha1", "registrylogins")
MANAGED = {"app.kubernetes.io/managed-by": "kiln"}
LOGIN_SECRETS = {handle_login.WATCHED_LABEL: "true"}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # kopf's own bookkeeping goes to annotations: status belongs to users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kiln.dev")
    settings.posting.level = logging.INFO
    # Only what is kiln's streams in: the API server filters Jobs, Pods and Secrets for the operator,
    # so its memory and work follow kiln's objects, not the cluster's size.
    settings.watching.label_selectors["batch/jobs"] = "app.kubernetes.io/managed-by=kiln"
    settings.watching.label_selectors["pods"] = "app.kubernetes.io/managed-by=kiln"
    settings.watching.label_selectors["secrets"] = f"{handle_login.WATCHED_LABEL}=true"
    apply.load_config()
    memo.runtime = Runtime(apply.Kube(), Settings.from_env())
    memo.metrics = metrics.serve(memo.runtime.settings.metrics_port)
    if memo.runtime.settings.namespaces:
        # Serving named namespaces: nothing to discover, so no namespace or CRD scanning (and no RBAC for it).
        settings.scanning.disabled = True
    memo.resync = asyncio.create_task(_resync(memo, logging.getLogger("kiln.resync")))


async def _resync(memo: kopf.Memo, logger: logging.Logger) -> None:
    """Every object again, now and then: re-verification, and retries after transient trouble.

    One loop for the operator instead of kopf timers, which would put a finalizer on every
    object and block its deletion whenever the operator is down.
    """
    runtime: Runtime = memo.runtime
    scopes = runtime.settings.namespaces or (None,)  # None: every namespace
    while True:
        await asyncio.sleep(runtime.settings.resync_interval)
        running = queued = 0
        for kind, scope in ((kind, scope) for kind in ("RegistryLogin", "ImageBuild") for scope in scopes):
            url = handle_login.login_path(scope) if kind == "RegistryLogin" else handle_build.build_path(scope)
            try:
                objects = await runtime.kube.list(url)
            except Exception as exc:  # the next round tries again
                logger.warning("resync: cannot list %ss: %s: %s", kind, type(exc).__name__, exc)
                continue
            if kind == "ImageBuild":
                running += sum((o.get("status") or {}).get("phase") in ("Pending", "Building") for o in objects)
                queued += sum(handle_build.queued(o) for o in objects)
            for obj in objects:
                namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                if kind == "ImageBuild" and handle_build.settled(obj):
                    continue  # a finished build waits for a change of its own, which its watch delivers
                try:
                    if kind == "RegistryLogin":
                        await handle_login.reconcile_login(runtime, obj, logger)
                    else:
                        await _build(memo, namespace, name, logger)
                except Exception as exc:  # one object's trouble must not keep the others waiting
                    logger.warning("resync of %s %s/%s failed: %s: %s", kind, namespace, name, type(exc).__name__, exc)
        metrics.BUILDS_RUNNING.set(running - queued)
        metrics.BUILDS_QUEUED.set(queued)


@kopf.on.login()
def login(**_) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(**apply.connection())


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_) -> None:
    memo.resync.cancel()
    memo.runtime.cancel_timers()
    if memo.metrics:
        memo.metrics.shutdown()
    await memo.runtime.kube.close()


@kopf.index(*LOGINS)
def logins_by_secret(namespace: str, name: str, spec: kopf.Spec, **_) -> dict:
    return {(namespace, (spec.get("secretRef") or {}).get("name")): name}


@kopf.index(*IMAGEBUILDS)
def builds_by_namespace(namespace: str, name: str, **_) -> dict:
    return {namespace: name}


async def _build(memo: kopf.Memo, namespace: str, name: str, logger: logging.Logger) -> None:
    """Reconcile one ImageBuild; look at it again when the decision asks to, or with backoff when it failed."""
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    again = lambda: _build(memo, namespace, name, logger)  # noqa: E731
    try:
        async with runtime.reconcile_slots:  # a burst of creates waits here, not all in memory at once
            with metrics.RECONCILES.track_inprogress():
                outcome = await handle_build.reconcile_build(runtime, namespace, name, logger)
    except Exception as exc:  # an API or network failure: this object tries again soon, not at the next resync
        metrics.RECONCILE_ERRORS.labels("ImageBuild").inc()
        delay = runtime.retry_delay(key)
        logger.warning("ImageBuild %s/%s: reconcile failed (%s: %s); trying again in %gs", namespace, name,
                       type(exc).__name__, exc, delay, exc_info=not isinstance(exc, (apply.KubeError, OSError)))
        runtime.later(key, delay, again)
        return
    runtime.failures.pop(key, None)
    if outcome.requeue_after is not None:
        runtime.later(key, outcome.requeue_after, again)
    for kind, reason, message in outcome.events:
        logger.info("ImageBuild %s/%s: %s: %s", namespace, name, reason, message)
        if reason == "BuildStarted":
            metrics.BUILDS_STARTED.inc()
        elif reason in ("BuildSucceeded", "BuildFailed") and outcome.status:
            spec = outcome.obj.get("spec") or {}
            metrics.build_finished(outcome.status, (spec.get("cache") or {}).get("type", "registry"),
                                   (spec.get("multiArch") or {}).get("strategy", "qemu"))
        try:
            await runtime.kube.post_event(outcome.obj, kind, reason, message)
        except apply.KubeError as exc:  # an event is a courtesy: the status already says it
            logger.warning("event %s for ImageBuild %s/%s not posted: %s", reason, namespace, name, exc)


async def _login(memo: kopf.Memo, body: dict, logger: logging.Logger, builds_by_namespace: kopf.Index) -> None:
    if await handle_login.reconcile_login(memo.runtime, body, logger) is None:
        return
    namespace = body["metadata"]["namespace"]
    for build in list(builds_by_namespace.get(namespace, [])):  # a copy: the index changes while builds run
        await _build(memo, namespace, build, logger)


@kopf.on.event(*IMAGEBUILDS)
async def imagebuild_changed(type: str, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
                             logger: logging.Logger, **_) -> None:
    if type == "DELETED":  # the children go with their owner reference
        memo.runtime.forget((namespace, name))
        return
    if memo.runtime.own_writes.get((namespace, name)) == body.metadata.get("resourceVersion"):
        return  # the echo of kiln's own status write: nothing changed that kiln did not know
    await _build(memo, namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(body: kopf.Body, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "ImageBuild" and ref.get("controller"):
            await _build(memo, namespace, ref["name"], logger)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    job = await memo.runtime.kube.get(apply.path("batch/v1", "jobs", namespace, labels.get("job-name", "")))
    if job:
        await job_changed(body=kopf.Body(job), namespace=namespace, memo=memo, logger=logger)


@kopf.on.event(*LOGINS)
async def login_changed(type: str, body: kopf.Body, memo: kopf.Memo, logger: logging.Logger,
                        builds_by_namespace: kopf.Index, **_) -> None:
    if type != "DELETED":
        await _login(memo, dict(body), logger, builds_by_namespace)


@kopf.on.event("", "v1", "secrets", labels=LOGIN_SECRETS)
async def secret_changed(namespace: str, name: str, memo: kopf.Memo, logger: logging.Logger,
                         logins_by_secret: kopf.Index, builds_by_namespace: kopf.Index, **_) -> None:
    for login in list(logins_by_secret.get((namespace, name), [])):  # rotation: re-verify without a restart
        obj = await memo.runtime.kube.get(handle_login.login_path(namespace, login))
        if obj:
            await _login(memo, obj, logger, builds_by_namespace)
