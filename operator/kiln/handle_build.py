"""ImageBuild: observe what there is, decide (decide.py, pure), carry the decision out, report it in status.

Level-triggered: every call looks at the ImageBuild, its Jobs, Pods and credentials and moves
one step toward the spec. Re-running it at any point (an operator restart, two events at once)
creates nothing twice: children have deterministic names and a 409 means "already there".
"""
from __future__ import annotations

import dataclasses
import datetime
import logging

from kiln import API_VERSION, reasons
from kiln.apply import Kube, KubeError, path
from kiln.cache import BUILD_LABEL, MANAGED, Reader
from kiln.credentials import CredentialsProblem, ResolvedLogin, merged_docker_config, resolved_login, selected_logins
from kiln.decide import (
    AssembleIndex,
    BuildLog,
    Decision,
    Event,
    Facts,
    ImageContents,
    JobEvents,
    PushCheck,
    Question,
    RegistryProblem,
    TagDigest,
    active,
    decide,
)
from kiln.handle_login import read_ca_config_map, ready_condition
from kiln.observe import cache_stats, true_condition
from kiln.parse import BuildSpec, InvalidSpec, parse_image_build, parse_registry_login, spec_identity
from kiln.references import registry_host, repository_path
from kiln.registry import RegistryError, assemble_index, image_platforms
from kiln.render import build_secret_name, short_name
from kiln.runtime import Runtime
from kiln.settings import Settings
from kiln.status import BUILDING, CANCELLED, FAILED, PENDING, SUCCEEDED, now_iso, status_patch

_PLURALS = {"Secret": "secrets", "Job": "jobs"}
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


async def reconcile_build(runtime: Runtime, namespace: str, name: str, logger: logging.Logger) -> Outcome:
    """One step for one ImageBuild."""
    if not runtime.cache.ready:  # kopf fills its indexes before any handler runs: only an early resync sees this
        return Outcome(None, [], 1.0)
    async with runtime.locks[(namespace, name)]:
        reader = runtime.reader()
        obj = await reader.build(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            runtime.locks.pop((namespace, name), None)
            return Outcome(None, [])
        facts = await observe(reader, runtime.settings, obj)
        decision = await decided(runtime, facts)
        if decision.ask is not None:
            logger.warning("ImageBuild %s/%s: still asking after %d questions; looking again soon", namespace, name,
                           MAX_QUESTIONS)
            return Outcome(obj, [], 1.0)
        refused = await carry_out(runtime, namespace, name, decision)
        if refused:  # decide again knowing it, and undo what was created before the refusal
            decision = await decided(runtime, dataclasses.replace(facts, refused=refused))
            await carry_out(runtime, namespace, name, decision)
        written = await write_status(runtime.kube, obj, decision.status)
        if written is not None:  # newer than the watch may show for a moment; its echo needs no look
            runtime.cache.wrote("ImageBuild", written)
        return Outcome(obj, decision.events, decision.requeue_after, decision.status)


async def decided(runtime: Runtime, facts: Facts) -> Decision:
    """decide, answering the registry questions it asks, one at a time."""
    decision = decide(facts)
    for _ in range(MAX_QUESTIONS):
        if decision.ask is None:
            break
        facts.answers[decision.ask] = await answer(runtime, facts, decision.ask)
        decision = decide(facts)
    return decision


def settled(obj: dict) -> bool:
    """A finished build of the current spec and rebuild token: only an edit or a new token gives it work again."""
    status, meta = obj.get("status") or {}, obj["metadata"]
    return status.get("phase") in (SUCCEEDED, FAILED, CANCELLED) and status.get("observedGeneration") == meta.get("generation") \
        and meta.get("resourceVersion") is not None and status.get("specIdentity") == spec_identity(obj)


async def write_status(kube: Kube, obj: dict, new: dict) -> dict | None:
    """Write the status when it changed (no write, no watch event, no reconcile storm otherwise); the object as written."""
    patch = status_patch(obj.get("status"), new, now_iso())
    meta = obj["metadata"]
    return None if patch is None else await kube.patch_status(build_path(meta["namespace"], meta["name"]), patch)


# -- observe --

def _children_of(name: str) -> dict[str, str]:
    """The labels of an ImageBuild's Jobs, Pods and Secret."""
    return {BUILD_LABEL: short_name(name), **MANAGED}


def _owned(obj: dict, uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj["metadata"].get("ownerReferences") or [])


async def observe(reader: Reader, settings: Settings, obj: dict) -> Facts:
    """Everything decide needs about one ImageBuild, from what the watches delivered (reader), before anything is decided."""
    meta = obj["metadata"]
    namespace, uid = meta["namespace"], meta.get("uid", "")
    try:
        spec, problem = parse_image_build(obj), None
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
    credentials = frozenset((item["metadata"].get("labels") or {}).get("kiln.dev/build-id", "")
                            for item in await reader.secrets(namespace, mine) if _owned(item, uid))
    facts = Facts(obj=obj, spec=spec, problem=problem, jobs=jobs, pods=pods, credentials=credentials,
                  logins=CredentialsProblem(reasons.LOGIN_NOT_FOUND, "not resolved"), logins_revision="",
                  settings=settings, now=datetime.datetime.now(datetime.UTC))
    if spec is None:
        return facts
    logins, revision = await resolve_logins(reader, spec)
    started = (obj.get("status") or {}).get("units") and (obj.get("status") or {}).get("buildID") == spec.build_id
    load = await _namespace_load(reader, obj) if settings.max_builds_per_namespace and not started else (0, 0)
    return dataclasses.replace(facts, logins=logins, logins_revision=revision,
                               ready_archs=await _ready_archs(reader) if spec.strategy == "auto" else frozenset(),
                               volume_holder=await _volume_holder(reader, spec), namespace_load=load)


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
    place = (meta.get("creationTimestamp") or "", meta["name"])
    ahead = [b for b in builds if _in_line(b) and b["metadata"]["name"] not in running
             and ((b["metadata"].get("creationTimestamp") or ""), b["metadata"]["name"]) < place]
    return len(running), len(ahead)


async def _ready_archs(reader: Reader) -> frozenset[str]:
    nodes = await reader.nodes()
    return frozenset((n["metadata"].get("labels") or {}).get("kubernetes.io/arch", "")
                     for n in nodes if true_condition(n, "Ready")) - {""}


async def _volume_holder(reader: Reader, spec: BuildSpec) -> str | None:
    """A pod (or a Job yet to make one) of another build on this cache volume: BuildKit's state serves one daemon.

    Pods, not only Jobs: a Job deleted in the background is gone while its pod still stops."""
    if not spec.cache.volume:
        return None
    label = {"kiln.dev/cache-volume": short_name(spec.cache.volume)}
    others = lambda item: (item["metadata"].get("labels") or {}).get("kiln.dev/build-id") != spec.build_id  # noqa: E731
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


# -- answers from registries --

async def answer(runtime: Runtime, facts: Facts, question: Question):
    """The registry's (or the build log's) answer to a question decide asked; a RegistryProblem if it failed."""
    if isinstance(question, BuildLog):
        log = await runtime.kube.pod_log(facts.spec.namespace, question.pod, "buildkit")
        return cache_stats(log)
    if isinstance(question, JobEvents):
        events = await runtime.kube.events_of(facts.spec.namespace, "Job", question.job)
        return [(event.get("reason", ""), event.get("message", "")) for event in events]
    if isinstance(question, PushCheck):
        logins = facts.logins
    else:  # reading what was pushed needs the credentials, not a login that is Ready right now
        logins, _ = await resolve_logins(runtime.reader(), facts.spec, ready=False)
        if isinstance(logins, CredentialsProblem):
            return RegistryProblem(logins.reason, logins.message, transient=True)
    try:
        if isinstance(question, PushCheck):
            for image in question.repositories:
                client = await runtime.registries.client(logins, registry_host(image))
                await runtime.registries.check_push(client, repository_path(image))
            return None
        client = await runtime.registries.client(logins, registry_host(question.image))
        repository = repository_path(question.image)
        if isinstance(question, TagDigest):
            media_type, _, digest = await client.get_manifest(repository, question.tag)
            return digest, media_type
        if isinstance(question, ImageContents):
            return await image_platforms(client, repository, question.digest, question.platforms)
        assert isinstance(question, AssembleIndex)
        return await assemble_index(client, repository, [(p, d) for p, d, _ in question.children], question.tags)
    except RegistryError as exc:
        return RegistryProblem(exc.reason, exc.message, exc.transient)


# -- apply --

async def carry_out(runtime: Runtime, namespace: str, build: str, decision: Decision) -> tuple[str, str] | None:
    """Delete, then create, in the decision's order. A create the API server refuses is returned as
    (object, message); transient API errors raise, and the caller tries again later."""
    kube = runtime.kube
    for name in decision.delete_jobs:
        await kube.delete(path("batch/v1", "jobs", namespace, name))
        runtime.cache.deleted(namespace, name)
    for build_id in decision.delete_credentials:
        name = build_secret_name(build, build_id)
        await kube.delete(path("v1", "secrets", namespace, name))
        runtime.cache.deleted_secret(namespace, name)
    for child in decision.create:
        try:
            await kube.create(path(child["apiVersion"], _PLURALS[child["kind"]], namespace), child)
            if child["kind"] == "Job":  # until the watch shows it, it is known to exist
                runtime.job_created(namespace, child)
            elif child["kind"] == "Secret":  # no watch shows kiln's own Secrets: this is how it knows
                runtime.cache.made_secret(namespace, child)
        except KubeError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise
            # A Secret's refusal could quote its data: say only the status code.
            detail = f"HTTP {exc.status}" if child["kind"] == "Secret" else exc.message
            return f"{child['kind']} {child['metadata']['name']}", detail
    return None
