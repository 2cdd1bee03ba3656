"""ImageBuild: gather what there is, decide (build/decide.py, pure), answer its questions, carry the decision
out, report it in status.

Level-triggered: every call looks at the ImageBuild, its Jobs, Pods and credentials and moves
one step toward the spec. Re-running it at any point (an operator restart, two events at once)
creates nothing twice: children have deterministic names and a 409 means "already there".
"""
from __future__ import annotations

import dataclasses
import datetime
import logging

from kiln import API_VERSION, metrics
from kiln.build.children import children
from kiln.build.decide import Decision, Event, Facts, current_spec, decide, settled
from kiln.build.outcomes import FAILED, SUCCEEDED
from kiln.build.render import short_name
from kiln.build.status import status_patch
from kiln.clients.kube import Kube, KubeError, path
from kiln.controller.answers import answer
from kiln.controller.carry_out import carry_out
from kiln.controller.gather import observe, queued
from kiln.controller.logins import reconcile_login
from kiln.controller.runtime import Runtime
from kiln.spec import labels

LOG = logging.getLogger("kiln.builds")  # what happens to builds, at INFO
# One decision may ask a registry about each unit (digest, log) and the index; more means something loops.
MAX_QUESTIONS = 24


def build_path(namespace: str | None, name: str | None = None) -> str:
    return path(API_VERSION, "imagebuilds", namespace, name)


@dataclasses.dataclass
class Outcome:
    obj: dict | None
    events: list[Event]
    requeue_after: float | None = None  # seconds until this ImageBuild should be looked at again
    status: dict | None = None  # the status decided


async def reconcile(runtime: Runtime, namespace: str, name: str, logger: logging.Logger) -> None:
    """Reconcile one ImageBuild through the work queue; report what happened (log, metrics, events)."""
    async def step() -> float | None:
        with metrics.RECONCILES.track_inprogress():
            outcome = await reconcile_build(runtime, namespace, name, logger)
        _report(runtime, outcome, namespace, name)
        if runtime.settings.max_builds_per_namespace and any(reason in _SLOT_FREED for _, reason, _ in outcome.events):
            _wake_the_line(runtime, namespace, logger)
        return outcome.requeue_after

    def failed(exc: Exception, delay: float) -> None:
        metrics.RECONCILE_ERRORS.labels("ImageBuild").inc()
        logger.warning("ImageBuild %s/%s: reconcile failed (%s: %s); trying again in %gs", namespace, name,
                       type(exc).__name__, exc, delay, exc_info=not isinstance(exc, (KubeError, OSError)))

    await runtime.queue.process((namespace, name), step, failed)


# Events that mean a build stopped running, and its namespace's line may move.
_SLOT_FREED = ("BuildSucceeded", "BuildFailed", "BuildCancelled")


def _wake_the_line(runtime: Runtime, namespace: str, logger: logging.Logger) -> None:
    """A slot of the namespace freed: the builds in its line look now, not at their next look (15 s)."""
    for build in runtime.cache.builds(namespace):
        if queued(build):
            name = build["metadata"]["name"]
            runtime.queue.after((namespace, name), 0, lambda n=name: reconcile(runtime, namespace, n, logger))


def _report(runtime: Runtime, outcome: Outcome, namespace: str, name: str) -> None:
    for kind, reason, message in outcome.events:
        LOG.info("ImageBuild %s/%s: %s: %s", namespace, name, reason, message)
        if reason == "BuildStarted":
            metrics.BUILDS_STARTED.inc()
        elif reason in ("BuildSucceeded", "BuildFailed") and outcome.status:
            spec = outcome.obj.get("spec") or {}
            metrics.build_finished(outcome.status, (spec.get("cache") or {}).get("type", "registry"),
                                   (spec.get("multiArch") or {}).get("strategy", "qemu"))
        runtime.recorder.record(outcome.obj, kind, reason, message)


async def reconcile_build(runtime: Runtime, namespace: str, name: str, logger: logging.Logger) -> Outcome:
    """One step for one ImageBuild (the work queue holds its key's lock)."""
    if not runtime.cache.ready:  # kopf fills its indexes before any handler runs: only an early resync sees this
        return Outcome(None, [], 1.0)
    reader = runtime.reader()
    obj = await reader.build(namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return Outcome(None, [])
    facts = await observe(reader, runtime.settings, obj, runtime.runs.of_imagebuild(namespace, short_name(name)),
                          runtime.runs.volume_holder)
    decision = await decided(runtime, facts)
    if decision.ask is not None:
        logger.warning("ImageBuild %s/%s: still asking after %d questions; looking again soon", namespace, name,
                       MAX_QUESTIONS)
        return Outcome(obj, [], 1.0)
    refused = await carry_out(runtime, namespace, name, decision, children(facts, decision))
    if refused:  # decide again knowing it, and undo what was created before the refusal
        decision = await decided(runtime, dataclasses.replace(facts, refused=refused))
        await carry_out(runtime, namespace, name, decision, children(facts, decision))
    _start_runs(runtime, facts, decision, logger)
    written = await write_status(runtime.kube, obj, decision.status)
    if written is not None:  # newer than the watch may show for a moment; its echo needs no look
        runtime.cache.wrote("ImageBuild", written)
    for unit in decision.status.get("units") or []:  # recorded: a run's result is kept in status now
        if unit.get("phase") in (SUCCEEDED, FAILED):
            runtime.runs.done_with(namespace, unit["job"])
    return Outcome(obj, decision.events, decision.requeue_after, decision.status)


def _start_runs(runtime: Runtime, facts: Facts, decision: Decision, logger: logging.Logger) -> None:
    """A warm builder's units run as the operator's own tasks, each of which wakes the build when it moves on."""
    spec = current_spec(facts) if decision.jobs else None
    if spec is None or not spec.builder.warm:
        return
    key = (spec.namespace, spec.name)
    wake = lambda: runtime.queue.after(key, 0, lambda: reconcile(runtime, *key, logger))  # noqa: E731
    for unit, attempt in decision.jobs:
        runtime.runs.start(spec, unit, attempt, facts.logins, wake)


async def decided(runtime: Runtime, facts: Facts) -> Decision:
    """decide, answering the registry questions it asks, one at a time."""
    decision = decide(facts)
    for _ in range(MAX_QUESTIONS):
        if decision.ask is None:
            break
        facts.answers[decision.ask] = await answer(runtime, facts, decision.ask)
        decision = decide(facts)
    return decision


async def write_status(kube: Kube, obj: dict, new: dict) -> dict | None:
    """Write the status when it changed (no write, no watch event, no reconcile storm otherwise); the object as written."""
    patch = status_patch(obj.get("status"), new, labels.iso(datetime.datetime.now(datetime.UTC)))
    meta = obj["metadata"]
    return None if patch is None else await kube.patch_status(build_path(meta["namespace"], meta["name"]), patch)




async def login_changed(runtime: Runtime, body: dict, logger: logging.Logger) -> None:
    """A login (or its Secret) changed: check it, then reconcile the builds of its namespace it can matter to."""
    if await reconcile_login(runtime, body) is None:
        return
    namespace = body["metadata"]["namespace"]
    # A copy (the cache changes meanwhile) of the builds a login can matter to: a finished one is done with logins.
    waiting = [b["metadata"]["name"] for b in runtime.cache.builds(namespace) if not settled(b)]
    for build in waiting:
        await reconcile(runtime, namespace, build, logger)
