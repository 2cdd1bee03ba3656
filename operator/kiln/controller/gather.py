"""gather: what the watches delivered about one ImageBuild (and the few reads no watch brings) -> decide's Facts.

Nothing is decided here: a problem with the spec or the logins becomes a fact for decide to report.
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence

from kiln.build.credentials import (
    CredentialsProblem,
    ResolvedLogin,
    merged_docker_config,
    mounted_secrets_problem,
    resolved_login,
    selected_logins,
    unshown_values,
)
from kiln.build.decide import (
    Facts,
    active,
)
from kiln.build.logins import ready_condition
from kiln.build.opt_in import used_secrets
from kiln.build.outcomes import FAILED, SUCCEEDED
from kiln.build.platforms import schedulable_archs
from kiln.build.render import short_name
from kiln.build.status import BUILDING, PENDING
from kiln.clients.watch_cache import BUILD_LABEL, MANAGED, Reader
from kiln.controller.logins import read_ca_config_map
from kiln.controller.runs import Run
from kiln.spec import labels, reasons
from kiln.spec.parse import BuildSpec, InvalidSpec, parse_image_build, parse_registry_login, spec_identity
from kiln.spec.settings import Settings


def _children_of(name: str) -> dict[str, str]:
    """The labels of an ImageBuild's Jobs, Pods and Secret."""
    return {BUILD_LABEL: short_name(name), **MANAGED}


def _owned(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


async def observe(reader: Reader, settings: Settings, obj: dict, runs: Sequence[Run] = (),
                  builder_on: Callable[[str, str], str | None] = lambda namespace, claim: None) -> Facts:
    """Everything decide needs about one ImageBuild, from what the watches delivered (reader), before anything is
    decided; runs: its builds on warm builders, shown as the Jobs and pods they stand in for; builder_on: the warm
    builder up with its state on a claim, if any."""
    meta = obj["metadata"]
    namespace, uid = meta["namespace"], meta.get("uid", "")
    try:
        spec, problem = parse_image_build(obj, await _warm_by_default(reader, obj)), None
    except InvalidSpec as exc:
        spec, problem = None, str(exc)
    mine = _children_of(meta["name"])
    jobs = tuple(j for j in await reader.jobs(namespace, mine)
                 if _owned(j, uid) and not j["metadata"].get("deletionTimestamp"))
    pods: dict[str, dict] = {}
    for pod in await reader.pods(namespace, mine):
        job = (pod["metadata"].get("labels") or {}).get("job-name", "")
        if job not in pods or pod["metadata"].get("creationTimestamp", "") > pods[job]["metadata"].get("creationTimestamp", ""):
            pods[job] = pod
    jobs += tuple(run.as_job() for run in runs)
    pods |= {run.name: run.as_pod() for run in runs}
    credentials = frozenset((item["metadata"].get("labels") or {}).get(labels.BUILD_ID, "")
                            for item in await reader.secrets(namespace, mine) if _owned(item, uid))
    facts = Facts(obj=obj, spec=spec, problem=problem, jobs=jobs, pods=pods, credentials=credentials,
                  logins=CredentialsProblem(reasons.LOGIN_NOT_FOUND, "not resolved"), logins_revision="",
                  settings=settings, now=datetime.datetime.now(datetime.UTC))
    if spec is None:
        return facts
    logins, revision = await resolve_logins(reader, spec)
    started = (obj.get("status") or {}).get("units") and (obj.get("status") or {}).get("buildID") == spec.build_id
    load = await _namespace_load(reader, obj) if settings.max_builds_per_namespace and not started else (0, 0)
    found = {} if started else {name: await reader.secret_metadata(namespace, name) for name in used_secrets(spec)}
    mounts = None if started else mounted_secrets_problem(spec, found)
    # A Secret that opts in (or appears) ends a backoff too: the resync sees it, as no watch shows such Secrets.
    mounts_revision = ",".join(str(((meta or {}).get("metadata") or {}).get("resourceVersion")) for meta in found.values())
    return dataclasses.replace(facts, logins=logins, logins_revision=revision,
                               ready_archs=schedulable_archs(await reader.nodes(), spec)
                               if _plans_by_node(spec, settings, started) else frozenset(),
                               volume_holder=await _volume_holder(reader, spec, builder_on), namespace_load=load,
                               mounts=mounts,
                               mounts_revision=mounts_revision,
                               secret_values=await _secret_values(reader, spec, logins, pods, obj.get("status") or {})
                               if mounts is None else frozenset())


async def _warm_by_default(reader: Reader, obj: dict) -> bool:
    """The namespace's default for a spec that leaves spec.builder.warm unset (read only for such a spec)."""
    builder = (obj.get("spec") or {}).get("builder")
    if isinstance(builder, Mapping) and builder.get("warm") is not None:
        return False
    return await reader.warm_by_default(obj["metadata"]["namespace"])


def _failed(pod: dict) -> bool:
    return any(((status.get("state") or {}).get("terminated") or {}).get("exitCode")
               for status in (pod.get("status") or {}).get("containerStatuses") or [])


async def _secret_values(reader: Reader, spec: BuildSpec, logins, pods: dict[str, dict],
                         status: dict) -> frozenset[str]:
    """What a failed build's output must not show: the values of the Secrets it mounts and its logins' passwords.
    Read only when a pod failed that status has not recorded yet, the one time its output reaches status."""
    recorded = {unit["job"] for unit in status.get("units") or [] if unit.get("phase") in (FAILED, SUCCEEDED)}
    if not any(_failed(pod) for job, pod in pods.items() if job not in recorded):
        return frozenset()
    return await redaction_values(reader, spec, logins)


async def redaction_values(reader: Reader, spec: BuildSpec, logins) -> frozenset[str]:
    """The values of the Secrets a build uses and its logins' passwords: what its output shown anywhere must not hold."""
    secrets = [await reader.secret(spec.namespace, name) for name in used_secrets(spec)]
    return unshown_values(logins if isinstance(logins, list) else [], secrets)


def _plans_by_node(spec: BuildSpec, settings: Settings, started) -> bool:
    """Whether the build's plan depends on the nodes (read only before it starts: the plan is in status then)."""
    one = len(spec.platforms) == 1 or (not spec.platforms and bool(settings.default_platform))
    return not started and (spec.strategy == "auto" or one)


def queued(build: dict) -> bool:
    """Waiting for its turn (KILN_MAX_BUILDS_PER_NAMESPACE)."""
    status = build.get("status") or {}
    reconciling = next((c for c in status.get("conditions") or [] if c.get("type") == "Reconciling"), {})
    return status.get("phase") == PENDING and reconciling.get("reason") == reasons.QUEUED


def _in_line(build: dict) -> bool:
    """Not started, and waiting for its turn only (a build blocked on its logins holds no place)."""
    return not build.get("status") or queued(build)


def _running(build: dict) -> bool:
    status = build.get("status") or {}
    return status.get("phase") in (PENDING, BUILDING) and bool(status.get("units"))


async def _namespace_load(reader: Reader, obj: dict) -> tuple[int, int]:
    """(builds running in obj's namespace, builds not yet started that came before obj): its place in line.

    A build with a Job that may still run is running, whatever its status says yet: kiln writes the status
    after it creates the Jobs, and another build's reconcile may come in between."""
    meta = obj["metadata"]
    namespace = meta["namespace"]
    builds = [b for b in await reader.builds(namespace) if b["metadata"]["name"] != meta["name"]]
    running = {b["metadata"]["name"] for b in builds
               if _running(b) or any(active(j) for j in await reader.jobs(namespace, _children_of(b["metadata"]["name"])))}
    place = (requested(obj), meta["name"])
    ahead = [b for b in builds if _in_line(b) and b["metadata"]["name"] not in running
             and (requested(b), b["metadata"]["name"]) < place]
    return len(running), len(ahead)


def requested(build: dict) -> str:
    """When the build it asks for was asked for: the line's order. An ImageBuild edited for each commit takes its
    place anew, behind those asked for before; one never looked at, its creation."""
    status, meta = build.get("status") or {}, build["metadata"]
    if not status:
        return meta.get("creationTimestamp") or ""
    if status.get("specIdentity") == spec_identity(build) and status.get("requestTime"):
        return status["requestTime"]
    return "~"  # asked for since its status was written: after every time written down (ISO times sort below "~")


async def _volume_holder(reader: Reader, spec: BuildSpec, builder_on: Callable[[str, str], str | None]) -> str | None:
    """A pod (or a Job yet to make one) of another build on this cache volume, or a warm builder with its state
    there unless the build runs on it: BuildKit's state serves one daemon.

    Pods, not only Jobs: a Job deleted in the background is gone while its pod still stops."""
    if not spec.cache.volume:
        return None
    if not spec.builder.warm and (builder := builder_on(spec.namespace, spec.cache.volume)):
        return builder
    label = {labels.CACHE_VOLUME: short_name(spec.cache.volume)}
    others = lambda item: (item["metadata"].get("labels") or {}).get(labels.BUILD_ID) != spec.build_id  # noqa: E731
    for pod in await reader.pods(spec.namespace, label):
        if others(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            return f"pod {pod['metadata']['name']}"
    for job in await reader.jobs(spec.namespace, label):
        if others(job) and active(job) and not job["metadata"].get("deletionTimestamp"):
            return f"Job {job['metadata']['name']}"
    return None


async def resolve_logins(reader: Reader, spec: BuildSpec,
                         ready: bool = True) -> tuple[list[ResolvedLogin] | CredentialsProblem, str]:
    """The build's RegistryLogins with the credentials from their Secrets, and a revision of all of them.

    ready: each must be Ready (to start a build); otherwise their Secrets are enough (to read a result).
    """
    objects = await reader.logins(spec.namespace)
    parsed, by_name = [], {}
    for item in objects:
        try:
            login = parse_registry_login(item)
        except InvalidSpec:
            continue  # reported on the login itself; named ones show up as not found below
        parsed.append(login)
        by_name[login.name] = item
    try:
        selected = selected_logins(spec, parsed)
    except CredentialsProblem as problem:
        return problem, ""
    # What a user changes in the logins the build uses (a spec, a Secret) or what their check finds (Ready), so
    # that such a change ends a backoff; kiln's own re-verification (a new lastVerifiedTime) does not.
    secrets = {login.name: await reader.secret(login.namespace, login.secret) for login in selected}
    revision = ",".join("{}:{}:{}".format(
        by_name[login.name]["metadata"].get("generation"), (ready_condition(by_name[login.name]) or {}).get("reason"),
        (secrets[login.name] or {}).get("metadata", {}).get("resourceVersion")) for login in selected)
    try:
        resolved = []
        for login in selected:
            condition = ready_condition(by_name[login.name])
            if ready and (not condition or condition.get("status") != "True"):
                detail = f"{condition['reason']}: {condition['message']}" if condition else "not checked yet"
                raise CredentialsProblem(reasons.LOGIN_NOT_READY, f"RegistryLogin {login.name!r} is not Ready ({detail})",
                                         stalls=condition is not None)
            resolved.append(resolved_login(login, secrets[login.name], await read_ca_config_map(reader.kube, login)))
        merged_docker_config(resolved)  # two logins for one registry are a conflict, reported before anything runs
    except CredentialsProblem as problem:
        return problem, revision
    return resolved, revision


