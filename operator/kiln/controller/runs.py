"""Builds on warm builders (spec.builder.warm): the operator starts the builder, runs buildctl against it, and
reports each run as the Job and pod it stands in for.

decide follows a unit by its Job and pod; a run on a builder has neither, so it is shown to decide in their shape
(as_job, as_pod): waiting for the builder is a pod waiting (an image pull failing says so), buildctl running is a
running container, its end a terminated one with its metadata file (or its log's tail) as the termination message,
the timeout a Job failed with DeadlineExceeded. Every rule decide applies to Jobs (supersede, suspend, timeout,
retry, cancel) then holds for runs unchanged, and deleting the "Job" cancels the run.

A run lives in the operator's memory: an operator that restarts mid-build has lost its client, the daemon cancels
that build, and decide sees its Job gone and retries it.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.build import builders
from kiln.build.credentials import ResolvedLogin, unshown_values
from kiln.build.logs import LIVE_SECONDS, LogBuffer, render_log
from kiln.build.opt_in import used_secrets
from kiln.build.outcomes import BUILDER_STARTING, BUILDER_UNREACHABLE, STOPPED_EXIT_CODE, excerpt, redacted
from kiln.build.platforms import BuildUnit
from kiln.build.render import job_metadata, job_name
from kiln.clients import buildctl, builder_tls
from kiln.clients.egress_proxy import EgressProxy
from kiln.clients.kube import Kube, KubeError, path
from kiln.clients.registry import AddressGuard
from kiln.spec import labels
from kiln.spec.parse import BuildSpec, ConfigMapSource
from kiln.spec.settings import Settings

LOG = logging.getLogger("kiln.builders")
POLL = 0.25  # seconds between looks at a builder that is not ready yet
_PULL_WAITS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
# buildctl's words for a daemon that went away mid-build: the builder's pod deleted, evicted or crashed.
_DAEMON_LOST = ("code = Unavailable", "error reading from server: EOF", "transport is closing")
_NOT_DIALED = "Error while dialing"  # buildctl never reached the daemon


def _now() -> str:
    return labels.iso(datetime.datetime.now(datetime.UTC))


class BuilderUnavailable(Exception):
    """The builder cannot run the build: why, in words for status."""


@dataclass
class Run:
    namespace: str
    name: str  # its unit's Job name, which status records
    kind: str  # builders.builder_name: what daemon it needs
    index: int  # which builder of that kind runs it
    meta: dict  # the labels and annotations its Job would have
    created: str = field(default_factory=_now)
    log: LogBuffer = field(default_factory=LogBuffer)
    waiting: tuple[str, str] | None = None  # (reason, message): why the builder is not ready
    started: str | None = None
    ended: str | None = None
    exit_code: int | None = None
    message: str = ""  # buildctl's metadata file, or the end of its output
    stopped: str = ""  # why it stopped before it ended (its builder went away)
    timed_out: bool = False
    task: asyncio.Task | None = None

    @property
    def builder(self) -> str:
        return builders.builder_of_kind(self.kind, self.index)

    def active(self) -> bool:
        return self.ended is None

    def as_job(self) -> dict:
        conditions = []
        if self.ended and self.exit_code == 0:
            conditions.append({"type": "Complete", "status": "True", "lastTransitionTime": self.ended})
        elif self.ended:
            conditions.append({"type": "Failed", "status": "True", "lastTransitionTime": self.ended,
                               "reason": "DeadlineExceeded" if self.timed_out else "BackoffLimitExceeded"})
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": self.name, "namespace": self.namespace, "creationTimestamp": self.created,
                             **self.meta},
                "status": {"conditions": conditions, **({"completionTime": self.ended} if self.exit_code == 0 else {})}}

    def as_pod(self) -> dict:
        if self.ended:
            state = {"terminated": {"exitCode": self.exit_code, "message": self.message,
                                    "reason": "Completed" if self.exit_code == 0 else "Error"}}
            phase = "Succeeded" if self.exit_code == 0 else "Failed"
        elif self.started:
            state, phase = {"running": {"startedAt": self.started}}, "Running"
        else:
            reason, message = self.waiting or (BUILDER_STARTING, f"waiting for builder {self.builder}")
            state, phase = {"waiting": {"reason": reason, "message": message}}, "Pending"
        status = {"phase": phase, "containerStatuses": [{"name": "buildkit", "state": state}]}
        if self.stopped:
            status["message"] = self.stopped
        return {"metadata": {"name": self.name, "namespace": self.namespace, "creationTimestamp": self.created,
                             "labels": {"job-name": self.name}}, "status": status}


@dataclass
class Runs:
    kube: Kube
    settings: Settings
    _runs: dict[tuple[str, str], Run] = field(default_factory=dict)  # (namespace, name) -> run
    _busy: Counter = field(default_factory=Counter)  # (namespace, builder) -> runs on it now
    _last_used: dict[tuple[str, str], float] = field(default_factory=dict)  # (namespace, builder) -> monotonic
    _volumes: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, builder) -> its state's claim
    egress: EgressProxy = field(init=False)  # what buildctl's token fetches go through

    def __post_init__(self) -> None:
        self.egress = EgressProxy(AddressGuard.of(self.settings))

    def of_imagebuild(self, namespace: str, imagebuild: str) -> list[Run]:
        return [run for (ns, _), run in self._runs.items()
                if ns == namespace and run.meta["labels"].get(labels.IMAGEBUILD) == imagebuild]

    def get(self, namespace: str, name: str) -> Run | None:
        return self._runs.get((namespace, name))

    def start(self, spec: BuildSpec, unit: BuildUnit, attempt: int, logins: list[ResolvedLogin],
              wake: Callable[[], None]) -> None:
        """Run one unit attempt on its builder; wake is called whenever what as_job and as_pod show changes."""
        name = job_name(spec, unit, attempt)
        if (spec.namespace, name) in self._runs:  # started already (a decision carried out again)
            return
        kind = builders.builder_name(spec, unit, logins, self.settings)
        index = 0 if spec.cache.volume else self._choose(spec.namespace, kind)  # one daemon on a state volume
        metadata = job_metadata(spec, unit, attempt)
        run = Run(spec.namespace, name, kind, index,
                  {"labels": metadata["labels"], "annotations": metadata["annotations"]})
        self._runs[(spec.namespace, name)] = run
        key = (spec.namespace, run.builder)
        self._busy[key] += 1  # now: a build started in the same moment sees it
        if spec.cache.volume:
            self._volumes[key] = spec.cache.volume
        run.task = asyncio.create_task(self._run(run, spec, unit, logins, wake), name=f"kiln-run-{name}")
        run.task.add_done_callback(lambda _: self._finished(key))

    def _up(self, namespace: str) -> set[str]:
        """The namespace's builders that are up: running a build, or not yet idle long enough to scale to zero."""
        return {name for ns, name in (*self._last_used, *(key for key, n in self._busy.items() if n))
                if ns == namespace}

    def volume_holder(self, namespace: str, claim: str) -> str | None:
        """The warm builder up in the namespace with its state on this claim, if any."""
        up = self._up(namespace)
        return next((f"warm builder {name}" for (ns, name), volume in self._volumes.items()
                     if ns == namespace and volume == claim and name in up), None)

    def _finished(self, key: tuple[str, str]) -> None:
        self._busy[key] -= 1
        self._last_used[key] = time.monotonic()

    def _choose(self, namespace: str, kind: str) -> int:
        """Which builder of the kind a build runs on: the first with room (its cache is the warmest), else a new
        one while the namespace has fewer than its maximum up, else the least busy."""
        up = self._up(namespace)
        ours = sorted(i for i in range(self.settings.max_builders_per_namespace)
                      if builders.builder_of_kind(kind, i) in up) or [0]
        busy = {i: self._busy[(namespace, builders.builder_of_kind(kind, i))] for i in ours}
        room = [i for i in ours if busy[i] < self.settings.builds_per_builder]
        if room:
            return room[0]
        if len(up) < self.settings.max_builders_per_namespace:
            return next(i for i in range(len(up) + 1) if i not in ours)
        return min(ours, key=lambda i: (busy[i], i))

    def cancel(self, namespace: str, name: str) -> bool:
        """Stop a run (buildctl cancels the build on the daemon) and forget it; False if there was none."""
        run = self._runs.pop((namespace, name), None)
        if run is None:
            return False
        if run.task and not run.task.done():
            run.task.cancel()
        return True

    def forget(self, namespace: str, imagebuild: str) -> None:
        """An ImageBuild is gone: its runs stop."""
        for run in self.of_imagebuild(namespace, imagebuild):
            self.cancel(namespace, run.name)

    def done_with(self, namespace: str, name: str) -> None:
        """Its result is recorded in status: nothing of it is needed any more."""
        run = self._runs.get((namespace, name))
        if run is not None and not run.active():
            del self._runs[(namespace, name)]

    async def _run(self, run: Run, spec: BuildSpec, unit: BuildUnit, logins: list[ResolvedLogin],
                   wake: Callable[[], None]) -> None:
        try:
            async with asyncio.timeout(spec.timeout_seconds):
                tls, address = await self._ready(run, spec, unit, logins, wake)
                secrets = await self._secrets(spec)
                files = builders.client_files(spec, logins, tls, secrets, await self._context(spec))
                run.started = _now()
                wake()
                publishing = asyncio.create_task(self._publish(run, spec, unshown_values(logins, secrets.values())))
                try:
                    code, metadata = await buildctl.run(self.settings.buildctl, lambda root: builders.client_args(
                        spec, unit, logins, self.settings, address=address, kind=run.kind, root=root),
                        files, run.log.feed, await self.egress.url(), address.rpartition(":")[0].strip("[]"))
                finally:
                    publishing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await publishing
            output = run.log.bounded().text()
            tail = output[-4000:]
            if code != 0 and any(words in tail for words in _DAEMON_LOST):
                run.stopped = f"its builder {run.builder} went away mid-build"
                code = STOPPED_EXIT_CODE
            elif code != 0 and _NOT_DIALED in tail:
                run.stopped = f"kiln could not connect to its builder {run.builder} at {address}"
                code = STOPPED_EXIT_CODE
            self._end(run, code, metadata if code == 0 else output)
        except TimeoutError:
            run.timed_out = True
            self._end(run, 1, run.log.bounded().text())
        except (BuilderUnavailable, builders.MissingInput) as exc:
            run.log.feed(f"kiln: {exc}\n".encode())
            self._end(run, 1, f"kiln: {exc}")
        except BuilderLost as exc:
            run.stopped = str(exc)
            self._end(run, STOPPED_EXIT_CODE, "")
        except asyncio.CancelledError:
            run.ended = run.ended or _now()
            raise
        except Exception as exc:  # the build fails, saying so, and the operator goes on
            LOG.warning("build %s/%s on builder %s: %s: %s", run.namespace, run.name, run.builder,
                        type(exc).__name__, exc)
            run.stopped = f"kiln could not run it on builder {run.builder} ({type(exc).__name__})"
            self._end(run, STOPPED_EXIT_CODE, "")
        wake()

    @staticmethod
    def _end(run: Run, code: int, message: str) -> None:
        run.exit_code, run.message, run.ended = code, excerpt(message, 200, 4096) if code else message, _now()

    async def _ready(self, run: Run, spec: BuildSpec, unit: BuildUnit, logins: list[ResolvedLogin],
                     wake: Callable[[], None]) -> tuple[dict[str, str], str]:
        """The builder's client certificates and its ready pod's address, once it has one: made and scaled up as
        needed; what keeps it from starting reported as it is seen."""
        namespace, name = run.namespace, run.builder
        tls = await self._secret(namespace, run.kind, logins)
        deployment = builders.render_builder(spec, unit, logins, self.settings, run.kind, run.index)
        await self.kube.create(path("apps/v1", "deployments", namespace), deployment)
        waited = time.monotonic()
        deadline = waited + self.settings.builder_start_timeout
        while True:
            current = await self.kube.get(path("apps/v1", "deployments", namespace, name))
            if current is None:
                raise BuilderLost(f"its builder {name} was deleted")
            if not (current.get("spec") or {}).get("replicas"):
                await self.kube.patch(path("apps/v1", "deployments", namespace, name), {"spec": {"replicas": 1}})
            refused = next((c.get("message", "") for c in (current.get("status") or {}).get("conditions") or []
                            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), "")
            if "violates PodSecurity" in refused:
                raise BuilderUnavailable(f"the namespace's Pod Security admission refuses builder {name}'s pod: "
                                         f"{refused[-300:]}")
            pods = await self.kube.list(path("v1", "pods", namespace), {builders.BUILDER_LABEL: name})
            address = await _answering(pods)
            if address:
                if run.waiting:  # it was not up: how long starting it took is worth knowing
                    LOG.info("builder %s/%s answered after %.2fs", namespace, name, time.monotonic() - waited)
                return tls, address
            unreachable = next((_address(p) for p in pods if _ready(p)), None)
            waiting = _waiting(pods) or (
                (BUILDER_UNREACHABLE, f"builder {name} is ready at {unreachable}, but the operator cannot connect "
                                      "to it (does a NetworkPolicy stop it?)") if unreachable else
                (BUILDER_STARTING, f"waiting for builder {name} to be ready" + (f" ({refused[-200:]})" if refused else "")))
            if waiting != run.waiting:
                run.waiting = waiting
                wake()
            if time.monotonic() > deadline:
                raise BuilderLost(f"its builder {name} was not ready after {self.settings.builder_start_timeout:g}s "
                                  f"({waiting[1][:300]})")
            await asyncio.sleep(POLL)

    async def _publish(self, run: Run, spec: BuildSpec, values: frozenset[str]) -> None:
        """The running build's log, in its ConfigMap every LIVE_SECONDS that it grew (kiln logs reads it there; the
        last of it is written when its end is recorded, as for any unit)."""
        written = -1
        while True:
            await asyncio.sleep(LIVE_SECONDS)
            log = run.log.bounded()
            if log.size == written:
                continue
            kept = render_log(run.as_job(), log.text(lambda part: redacted(part, values)), (spec.name, spec.uid),
                              live=True)
            try:
                if written >= 0 or not await self.kube.create(path("v1", "configmaps", run.namespace), kept):
                    await self.kube.patch(path("v1", "configmaps", run.namespace, kept["metadata"]["name"]),
                                          {"binaryData": kept["binaryData"]})
            except Exception as exc:  # tried again in a moment; the build goes on
                LOG.warning("build %s/%s: writing its running log failed: %s: %s", run.namespace, run.name,
                            type(exc).__name__, exc)
                continue
            written = log.size

    async def _secret(self, namespace: str, name: str, logins: list[ResolvedLogin]) -> dict[str, str]:
        """The builder's certificates: made with its Secret the first time, read back after."""
        url = path("v1", "secrets", namespace, name)
        secret = await self.kube.get(url)
        if secret is None:
            made = builder_tls.issue(name)
            if await self.kube.create(path("v1", "secrets", namespace),
                                      builders.render_builder_secret(namespace, name, made, logins)):
                return made
            secret = await self.kube.get(url)  # another build made it first
        data = (secret or {}).get("data") or {}
        missing = [key for key in builders.CLIENT_FILES if key not in data]
        if missing:
            raise BuilderUnavailable(f"builder Secret {name} lacks {', '.join(missing)}: delete it, kiln makes "
                                     "another")
        return {key: base64.b64decode(data[key]).decode() for key in builders.CLIENT_FILES}

    async def _secrets(self, spec: BuildSpec) -> dict[str, dict | None]:
        return {name: await self.kube.get(path("v1", "secrets", spec.namespace, name)) for name in used_secrets(spec)}

    async def _context(self, spec: BuildSpec) -> dict | None:
        origin = spec.source.origin
        if not isinstance(origin, ConfigMapSource):
            return None
        return await self.kube.get(path("v1", "configmaps", spec.namespace, origin.name))

    async def scale_idle(self) -> None:
        """Every builder idle for longer than KILN_BUILDER_IDLE goes to zero replicas. Run forever."""
        await self._adopt()
        while True:
            await asyncio.sleep(min(30.0, max(self.settings.builder_idle / 4, 1.0)))
            now = time.monotonic()
            for key, last in list(self._last_used.items()):
                if self._busy[key] or now - last < self.settings.builder_idle:
                    continue
                del self._last_used[key]
                try:
                    await self.kube.patch(path("apps/v1", "deployments", *key), {"spec": {"replicas": 0}})
                    LOG.info("builder %s/%s scaled to zero after %gs idle", *key, self.settings.builder_idle)
                except KubeError as exc:
                    if exc.status != 404:
                        self._last_used[key] = last  # tried again at the next round
                        LOG.warning("builder %s/%s: scaling to zero failed: %s", *key, exc)

    async def _adopt(self) -> None:
        """Builders that run from before a restart idle from now."""
        for namespace in self.settings.namespaces or (None,):
            try:
                found = await self.kube.list(path("apps/v1", "deployments", namespace),
                                             {**labels.MANAGED, "app.kubernetes.io/component": "builder"})
            except KubeError as exc:
                LOG.warning("listing builders failed (%s): those running now are not scaled to zero", exc)
                continue
            for deployment in found:
                if (deployment.get("spec") or {}).get("replicas"):
                    meta = deployment["metadata"]
                    key = (meta["namespace"], meta["name"])
                    self._last_used.setdefault(key, time.monotonic())
                    if claim := _state_claim(deployment):
                        self._volumes[key] = claim


class BuilderLost(Exception):
    """The builder went away, or never came: the build may run again (retryable)."""


def _state_claim(deployment: dict) -> str | None:
    """The claim a builder keeps its state on, if it has one."""
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return next((v["persistentVolumeClaim"]["claimName"] for v in volumes
                 if v["name"] == "buildkit-state" and "persistentVolumeClaim" in v), None)


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("podIP")) and not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


async def _answering(pods: list[dict]) -> str | None:
    """The address of a running builder pod whose daemon takes the operator's connections: as soon as it does,
    before the kubelet's next readiness probe says so (up to a second later); and never a ready one the operator
    cannot reach, which the kubelet's probe from the node does not see."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running" or not pod["status"].get("podIP") \
                or pod["metadata"].get("deletionTimestamp"):
            continue
        host, _, port = _address(pod).rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 0.5)
        except (OSError, TimeoutError):
            continue
        writer.close()
        return _address(pod)
    return None


def _address(pod: dict) -> str:
    """host:port of the daemon in a ready builder pod (the port its spec names buildkit)."""
    ip = pod["status"]["podIP"]
    port = next((port["containerPort"] for container in (pod.get("spec") or {}).get("containers") or []
                 for port in container.get("ports") or [] if port.get("name") == "buildkit"), builders.PORT)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _waiting(pods: list[dict]) -> tuple[str, str] | None:
    """What a builder's pod waits for, as its container says: an image pull failing above all."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _PULL_WAITS:
                return waiting["reason"], waiting.get("message", "")
    return None
