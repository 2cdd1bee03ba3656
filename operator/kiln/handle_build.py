"""ImageBuild: start one build per identity, follow its pods to the end, report it in status.

Level-triggered: every call reads the ImageBuild, its Jobs and their Pods and moves
one step toward the spec. Re-running it at any point (an operator restart, two
events at once) creates nothing twice: children have deterministic names.
"""
from __future__ import annotations

import dataclasses
import logging

from kiln import API_VERSION, observe, reasons
from kiln.apply import Kube, KubeError, path
from kiln.credentials import CredentialsProblem, ResolvedLogin, resolved_login, selected_logins
from kiln.handle_login import login_path, read_ca_config_map, ready_condition
from kiln.observe import ObservedUnit, UnitState, cache_stats, observe_unit, true_condition
from kiln.parse import BuildSpec, InvalidSpec, parse_image_build, parse_registry_login
from kiln.references import registry_host, repository_path, split_tagged
from kiln.registry import MANIFEST_MEDIA_TYPES, Registry, RegistryClient, RegistryError, platform_digests, push_index
from kiln.render import (
    buildkitd_config_name,
    docker_secret_name,
    job_name,
    render_build,
    short_name,
)
from kiln.resolve import BuildUnit, build_plan
from kiln.runtime import Runtime
from kiln.settings import Settings
from kiln.status import (
    BUILDING,
    CANCELLED,
    FAILED,
    PENDING,
    SUCCEEDED,
    BuildStatus,
    build_record,
    invalid_build_status,
    now_iso,
    status_patch,
    with_history,
)

Event = tuple[str, str, str]  # (Normal|Warning, reason, message)
_PLURALS = {"Secret": "secrets", "ConfigMap": "configmaps", "Job": "jobs"}


def build_path(namespace: str | None, name: str | None = None) -> str:
    return path(API_VERSION, "imagebuilds", namespace, name)


class Blocked(Exception):
    """The build cannot start yet: credentials, push access, a busy cache volume or a refused child."""

    def __init__(self, reason: str, message: str, credentials: bool = True, stalled: bool = True):
        super().__init__(message)
        self.reason, self.message, self.credentials, self.stalled = reason, message, credentials, stalled


async def reconcile_build(runtime: Runtime, namespace: str, name: str,
                          logger: logging.Logger) -> tuple[dict | None, list[Event]]:
    """One step for one ImageBuild; returns (the object as read, events to post)."""
    async with runtime.locks[(namespace, name)]:
        obj = await runtime.kube.get(build_path(namespace, name))
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            runtime.locks.pop((namespace, name), None)
            return None, []
        status, events = await _reconcile(runtime.kube, runtime.settings, obj, logger)
        await write_status(runtime.kube, obj, status)
        return obj, events


async def write_status(kube: Kube, obj: dict, new: dict) -> bool:
    """Write the status when it changed: no write, no watch event, no reconcile storm otherwise."""
    patch = status_patch(obj.get("status"), new, now_iso())
    meta = obj["metadata"]
    return patch is not None and await kube.patch_status(build_path(meta["namespace"], meta["name"]), patch)


def _owned(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


def _active(job: dict) -> bool:
    return not (true_condition(job, "Complete") or true_condition(job, "Failed"))


def _attempt(job: dict) -> int:
    return int((job["metadata"].get("annotations") or {}).get("kiln.dev/attempt", "0"))


def _unit_of(job: dict) -> BuildUnit:
    annotations = job["metadata"].get("annotations") or {}
    platforms = tuple(p for p in annotations.get("kiln.dev/platforms", "").split(",") if p)
    key = job["metadata"]["labels"].get("kiln.dev/unit", "all")
    arch = job["spec"]["template"]["spec"].get("nodeSelector", {}).get("kubernetes.io/arch") \
        if annotations.get("kiln.dev/built-by") == "native" else None
    return BuildUnit(platforms, arch, "" if key == "all" else key)


def _job_path(namespace: str, name: str | None = None) -> str:
    return path("batch/v1", "jobs", namespace, name)


async def _reconcile(kube: Kube, settings: Settings, obj: dict, logger: logging.Logger) -> tuple[dict, list[Event]]:
    meta = obj["metadata"]
    namespace, uid, generation = meta["namespace"], meta.get("uid", ""), meta.get("generation") or 1
    old = obj.get("status") or {}
    try:
        spec = parse_image_build(obj)
    except InvalidSpec as exc:
        return invalid_build_status(generation, str(exc), old.get("history")), []
    if old.get("specIdentity") == spec.identity and old.get("buildID"):
        spec = dataclasses.replace(spec, build_id=old["buildID"])  # same image: same build, even at a new generation
    same_build = old.get("buildID") == spec.build_id
    history = old.get("history") or []
    events: list[Event] = []
    jobs = [j for j in await kube.list(_job_path(namespace), {"kiln.dev/imagebuild": short_name(spec.name)})
            if _owned(j, uid) and not j["metadata"].get("deletionTimestamp")]

    for job in jobs:  # a new build supersedes whatever still runs for an older one
        other = job["metadata"]["labels"].get("kiln.dev/build-id")
        if other != spec.build_id and _active(job):
            await kube.delete(_job_path(namespace, job["metadata"]["name"]))
            if old.get("buildID") == other and old.get("phase") in (PENDING, BUILDING):
                history = with_history(history, build_record(old, CANCELLED, reasons.SUPERSEDED), spec.history_limit)
                events.append(("Normal", "BuildSuperseded", f"build {other} superseded by {spec.build_id}"))
    current = [j for j in jobs if j["metadata"]["labels"].get("kiln.dev/build-id") == spec.build_id]
    carried = old if same_build else {}
    status_of = BuildStatus(spec, generation, carried, history)

    if spec.suspend:
        running = [j for j in current if _active(j)]
        for job in running:
            await kube.delete(_job_path(namespace, job["metadata"]["name"]))
        if running or old.get("phase") != CANCELLED:
            await _remove_credentials(kube, spec)
        if same_build and old.get("phase") in (SUCCEEDED, FAILED):
            return status_of.keep(), events
        if running:
            events.append(("Normal", "BuildCancelled", f"build {spec.build_id} cancelled: spec.suspend is true"))
            status_of.history = with_history(status_of.history, build_record({**carried, "buildID": spec.build_id},
                                                                        CANCELLED, reasons.SUSPENDED), spec.history_limit)
        return status_of.make(CANCELLED, reasons.SUSPENDED, "suspended: nothing is built until spec.suspend is false"), events

    if same_build and old.get("phase") in (SUCCEEDED, FAILED):  # done; its credentials went when it ended
        await _trim_history(kube, spec, jobs, status_of.history)
        return status_of.keep(), events

    attempt_base = carried.get("attempt", -1) + 1 if carried.get("phase") == CANCELLED else 0
    units = await _observe(kube, spec, [j for j in current if _attempt(j) >= attempt_base])
    try:
        if not units:
            plan = build_plan(spec, await _ready_archs(kube) if spec.strategy == "auto" else frozenset())
            await _check_cache_volume(kube, spec, jobs)
            await _start(kube, settings, spec, plan, attempt_base, first=True)
            events.append(("Normal", "BuildStarted", f"build {spec.build_id} started: {len(plan)} BuildKit pod(s)"))
            return status_of.make(PENDING, reasons.BUILD_PENDING, "build Jobs created",
                                  attempt=attempt_base, job_names=[job_name(spec, u, attempt_base) for u in plan]), events
        retry = [u for u in units if u.state.phase == observe.FAILED and u.state.retryable and u.attempt < spec.retries]
        for unit in retry:
            if unit.job and _active(unit.job):
                await kube.delete(_job_path(namespace, unit.job["metadata"]["name"]))
            await _start(kube, settings, spec, (unit.unit,), unit.attempt + 1, first=False)
            events.append(("Warning", "BuildRetried", f"{unit.state.reason}: {unit.state.message}; "
                                                      f"attempt {unit.attempt + 2} of {spec.retries + 1}"))
    except Blocked as blocked:
        return status_of.blocked(blocked.reason, blocked.message, credentials=blocked.credentials,
                                stalled=blocked.stalled), events
    if retry:
        return status_of.make(BUILDING, reasons.BUILDING, f"retrying after {retry[0].state.reason}",
                              units=units, attempt=max(u.attempt for u in retry) + 1), events
    return await _conclude(kube, settings, spec, units, status_of, jobs, events, logger)


async def _conclude(kube: Kube, settings: Settings, spec: BuildSpec, units: list[ObservedUnit], status_of: BuildStatus,
                    jobs: list[dict], events: list[Event], logger: logging.Logger) -> tuple[dict, list[Event]]:
    failed = next((u for u in units if u.state.phase == observe.FAILED), None)
    if failed:
        for unit in units:  # one platform failed: the index cannot be made, stop the others
            if unit.job and _active(unit.job):
                await kube.delete(_job_path(spec.namespace, unit.job["metadata"]["name"]))
        await _remove_credentials(kube, spec)
        status = status_of.failed(failed, units)
        events.append(("Warning", "BuildFailed", f"{failed.state.reason}: {failed.state.message}"))
        await _trim_history(kube, spec, jobs, status["history"])
        return status, events
    if all(u.state.phase == observe.SUCCEEDED for u in units):
        try:
            digest, platforms = await _results(kube, settings, spec, units, logger)
        except (RegistryError, CredentialsProblem) as exc:
            if isinstance(exc, RegistryError) and exc.transient:  # tried again on the next resync
                return status_of.make(BUILDING, exc.reason, f"the images are built; assembling the index: {exc.message}",
                                      units=units), events
            failed = dataclasses.replace(units[0], state=UnitState(observe.FAILED, exc.reason,
                                                                   f"assembling the index: {exc.message}"))
            return await _conclude(kube, settings, spec, [failed], status_of, jobs, events, logger)
        cached, total = await _cache_stats(kube, spec, units)
        await _remove_credentials(kube, spec)
        status = status_of.succeeded(units, digest, platforms, cached, total)
        events.append(("Normal", "BuildSucceeded", f"pushed {status.get('image') or spec.output.image}"))
        await _trim_history(kube, spec, jobs, status["history"])
        logger.info("ImageBuild %s/%s: build %s succeeded (%s)", spec.namespace, spec.name, spec.build_id, digest)
        return status, events
    phase = BUILDING if any(u.state.phase in (observe.RUNNING, observe.SUCCEEDED) for u in units) else PENDING
    waiting = next((u.state for u in units if u.state.phase == observe.PENDING), units[0].state)
    message = "building" if phase == BUILDING else waiting.message
    return status_of.make(phase, reasons.BUILDING if phase == BUILDING else reasons.BUILD_PENDING, message,
                          units=units), events


async def _observe(kube: Kube, spec: BuildSpec, jobs: list[dict]) -> list[ObservedUnit]:
    """The latest attempt of every unit, with its pod and state."""
    latest: dict[str, dict] = {}
    for job in jobs:
        key = job["metadata"]["labels"].get("kiln.dev/unit", "all")
        if key not in latest or _attempt(job) > _attempt(latest[key]):
            latest[key] = job
    units = []
    for key in sorted(latest):
        job = latest[key]
        pods = await kube.list(path("v1", "pods", spec.namespace), {"job-name": job["metadata"]["name"]})
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)
        units.append(ObservedUnit(_unit_of(job), job, pod, observe_unit(job, pod), _attempt(job)))
    return units


async def _ready_archs(kube: Kube) -> frozenset[str]:
    nodes = await kube.list(path("v1", "nodes"))
    return frozenset((n["metadata"].get("labels") or {}).get("kubernetes.io/arch", "")
                     for n in nodes if true_condition(n, "Ready")) - {""}


async def _check_cache_volume(kube: Kube, spec: BuildSpec, own_jobs: list[dict]) -> None:
    """BuildKit's state directory serves one daemon at a time: wait while another build holds the volume."""
    if not spec.cache.volume:
        return
    label = short_name(spec.cache.volume)
    holders = [j for j in await kube.list(_job_path(spec.namespace), {"kiln.dev/cache-volume": label})
               if _active(j) and j not in own_jobs]
    if holders:
        raise Blocked(reasons.WAITING_FOR_CACHE_VOLUME,
                      f"cache volume {spec.cache.volume} is in use by Job {holders[0]['metadata']['name']}",
                      credentials=False, stalled=False)


async def resolve_logins(kube: Kube, spec: BuildSpec) -> list[ResolvedLogin]:
    """The build's RegistryLogins, each Ready, with the credentials from their Secrets."""
    objects = await kube.list(login_path(spec.namespace))
    parsed, by_name = [], {}
    for item in objects:
        try:
            login = parse_registry_login(item)
        except InvalidSpec:
            continue  # reported on the login itself; named ones show up as not found below
        parsed.append(login)
        by_name[login.name] = item
    resolved = []
    for login in selected_logins(spec, parsed):
        ready = ready_condition(by_name[login.name])
        if not ready or ready.get("status") != "True":
            detail = f"{ready['reason']}: {ready['message']}" if ready else "not checked yet"
            raise CredentialsProblem(reasons.LOGIN_NOT_READY, f"RegistryLogin {login.name!r} is not Ready ({detail})")
        secret = await kube.get(path("v1", "secrets", login.namespace, login.secret))
        resolved.append(resolved_login(login, secret, await read_ca_config_map(kube, login)))
    return resolved


def _client(settings: Settings, logins: list[ResolvedLogin], host: str) -> RegistryClient:
    login = next((item for item in logins if item.server == host), None)
    return RegistryClient(Registry(host, bool(login and login.insecure), login.ca_pem if login else None),
                          login.credentials if login else None, timeout=settings.registry_timeout,
                          allow_link_local=settings.allow_link_local)


async def _preflight(settings: Settings, spec: BuildSpec, logins: list[ResolvedLogin]) -> None:
    """Every repository the build will push to (image, cache) accepts a push with these credentials."""
    targets = [spec.output.image] if spec.output.push else []
    if spec.cache.type == "registry" and spec.cache.ref:
        targets.append(split_tagged(spec.cache.ref)[0])
    for image in dict.fromkeys(targets):
        async with _client(settings, logins, registry_host(image)) as client:
            await client.check_push(repository_path(image))


async def _start(kube: Kube, settings: Settings, spec: BuildSpec, plan: tuple[BuildUnit, ...], attempt: int,
                 first: bool) -> None:
    """Create the build's children. A first start checks push access first and, if refused, leaves no credentials."""
    try:
        logins = await resolve_logins(kube, spec)
        if first:
            await _preflight(settings, spec, logins)
        children = render_build(spec, logins, plan, settings, attempt)  # what `kiln render` prints, in creation order
    except CredentialsProblem as exc:
        raise Blocked(exc.reason, exc.message) from None
    except RegistryError as exc:
        raise Blocked(exc.reason, f"push check: {exc.message}", stalled=not exc.transient) from None
    try:
        for child in children:
            await _create(kube, path(child["apiVersion"], _PLURALS[child["kind"]], spec.namespace), child)
    except Blocked:
        if first:  # no pod of this build runs: its credentials need not wait
            await _remove_credentials(kube, spec)
        raise


async def _create(kube: Kube, url: str, obj: dict) -> None:
    """Create a child; a refusal (validation, quota, admission) becomes the build's status, not a traceback."""
    try:
        await kube.create(url, obj)
    except KubeError as exc:
        kind, name = obj["kind"], obj["metadata"]["name"]
        # A Secret's refusal could quote its data: say only the status code.
        detail = f"HTTP {exc.status}" if kind == "Secret" else exc.message
        transient = exc.status >= 500 or exc.status == 429
        raise Blocked(reasons.CREATE_REJECTED, f"the API server refused to create {kind} {name}: {detail}",
                      credentials=False, stalled=not transient) from None


async def _remove_credentials(kube: Kube, spec: BuildSpec) -> None:
    """The merged Secret lives only while a build pod may need it."""
    await kube.delete(path("v1", "secrets", spec.namespace, docker_secret_name(spec)))
    await kube.delete(path("v1", "configmaps", spec.namespace, buildkitd_config_name(spec)))


async def _trim_history(kube: Kube, spec: BuildSpec, jobs: list[dict], history: list[dict]) -> None:
    keep = {spec.build_id} | {item.get("buildID") for item in history}
    for job in jobs:
        if job["metadata"]["labels"].get("kiln.dev/build-id") not in keep:
            await kube.delete(_job_path(spec.namespace, job["metadata"]["name"]))


async def _results(kube: Kube, settings: Settings, spec: BuildSpec, units: list[ObservedUnit],
                   logger: logging.Logger) -> tuple[str | None, list[dict]]:
    """The pushed digest and the digest of each platform, assembling the index when several pods built it."""
    if not spec.output.push:
        return units[0].state.digest, []
    several = any(u.unit.by_digest for u in units)
    logins = await resolve_logins(kube, spec)
    repository = repository_path(spec.output.image)
    async with _client(settings, logins, registry_host(spec.output.image)) as client:
        try:
            images = await collect_images(client, repository, [(u.unit, u.state) for u in units])
        except RegistryError as exc:
            if several:
                raise
            # One pod pushed the result itself: its digest is BuildKit's word; the platform list is a courtesy.
            logger.warning("could not read %s for its platforms: %s", spec.output.image, exc.message)
            images = []
        digest = await push_index(client, repository, [(p, d) for p, d, _ in images], spec.output.tags) \
            if several else units[0].state.digest
    return digest, [{"platform": p, "digest": d, "builtBy": b} for p, d, b in images]


async def collect_images(client: RegistryClient, repository: str,
                         results: list[tuple[BuildUnit, UnitState]]) -> list[tuple[str, str, str]]:
    """(platform, manifest digest, built by) of every image the pods pushed; an index is looked into."""
    images = []
    for unit, state in results:
        digest = state.digest or ""
        if state.media_type in MANIFEST_MEDIA_TYPES and len(unit.platforms) == 1:
            images.append((unit.platforms[0], digest, unit.built_by))
            continue
        media_type, body, _ = await client.get_manifest(repository, digest)
        found = platform_digests(media_type, body)
        if not found and len(unit.platforms) == 1:  # a plain manifest after all
            found = [(unit.platforms[0], digest)]
        images += [(platform, image, unit.built_by) for platform, image in found]
    return images


async def _cache_stats(kube: Kube, spec: BuildSpec, units: list[ObservedUnit]) -> tuple[int, int]:
    cached = total = 0
    for unit in units:
        if unit.pod:
            log = await kube.pod_log(spec.namespace, unit.pod["metadata"]["name"], "buildkit")
            c, t = cache_stats(log)
            cached, total = cached + c, total + t
    return cached, total


