"""decide: everything known about one ImageBuild -> what to do next and the status to report (pure).

observe gathers the inputs (Facts); apply carries out the Decision. Nothing here reads a clock,
a cluster or a registry: when a decision needs a registry's answer (may we push? which digest
does the tag have? the assembled index), it asks a Question, and the caller decides again with
the answer in Facts.answers.

The plan of a build (its units: which pod builds which platforms) is written into status when
the build starts, and the build concludes against that plan, never against whatever Jobs exist.
A unit's result is recorded in status as soon as it is seen, so a Job deleted later loses nothing.
"""
from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field

from kiln.build import status as statuses
from kiln.build.credentials import CredentialsProblem, ResolvedLogin
from kiln.build.outcomes import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING_FOR_POD,
    UnitState,
    observe_unit,
    true_condition,
)
from kiln.build.platforms import BuildUnit, build_plan
from kiln.build.render import buildkitd_files, job_name, render_build, render_job
from kiln.build.status import BUILDING, CANCELLED
from kiln.build.status import FAILED as BUILD_FAILED
from kiln.build.status import PENDING as BUILD_PENDING
from kiln.build.status import SUCCEEDED as BUILD_SUCCEEDED
from kiln.spec import labels, reasons
from kiln.spec.parse import BuildSpec, InvalidSpec
from kiln.spec.references import MANIFEST_MEDIA_TYPES, split_tagged
from kiln.spec.settings import Settings

Event = tuple[str, str, str]  # (Normal|Warning, reason, message)
# Blocked and stalled builds look again after 10s, 20s, 40s ... at most every 10 minutes, and at once
# when their spec or a login they use changes.
BACKOFF_BASE, BACKOFF_CAP = 10.0, 600.0
WAIT_FOR_VOLUME = 15.0
# A Job with no pod after this long is asked why (Pod Security admission, a quota); then every this long again.
POD_PATIENCE = 10.0


# -- questions decide asks a registry, and their answers --

@dataclass(frozen=True)
class PushCheck:
    """Do these repositories accept a push with the build's credentials?"""
    repositories: tuple[str, ...]


@dataclass(frozen=True)
class TagDigest:
    """Which digest and media type does this tag have (a build that pushed but reported no digest)?"""
    image: str
    tag: str


@dataclass(frozen=True)
class ImageContents:
    """(platform, manifest digest) of each image in what was pushed under this digest."""
    image: str
    digest: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class AssembleIndex:
    """Verify every child is in the registry, push one index of them under every tag; answer its digest."""
    image: str
    children: tuple[tuple[str, str, str], ...]  # (platform, digest, media type)
    tags: tuple[str, ...]


@dataclass(frozen=True)
class JobEvents:
    """What the Job controller said about a Job that has made no pod: (reason, message) of its events."""
    job: str


@dataclass(frozen=True)
class BuildLog:
    """The build pod's log, for what BuildKit took from a cache."""
    pod: str


Question = PushCheck | TagDigest | ImageContents | AssembleIndex | BuildLog | JobEvents


@dataclass(frozen=True)
class RegistryProblem:
    """A registry's answer that was not the fact asked for."""
    reason: str
    message: str
    transient: bool


# -- inputs and outputs --

@dataclass(frozen=True)
class Facts:
    obj: dict  # the ImageBuild as the watch delivered it
    spec: BuildSpec | None  # None when the spec is invalid
    problem: str | None  # why the spec is invalid
    jobs: tuple[dict, ...]  # Jobs this ImageBuild owns (every build), not being deleted
    pods: dict[str, dict]  # Job name -> its latest pod
    credentials: frozenset[str]  # build IDs whose Secret exists
    logins: list[ResolvedLogin] | CredentialsProblem  # the build's logins, each Ready, with credentials
    logins_revision: str  # changes when a login or its Secret changes
    settings: Settings
    now: datetime.datetime
    ready_archs: frozenset[str] = frozenset()
    volume_holder: str | None = None  # a running pod of another build on the local cache volume
    # With KILN_MAX_BUILDS_PER_NAMESPACE: (builds running in the namespace, builds ahead of this one in line).
    namespace_load: tuple[int, int] = (0, 0)
    answers: dict = field(default_factory=dict)  # Question -> answer (or RegistryProblem)
    refused: tuple[str, str] | None = None  # (object, message) the API server refused to create


@dataclass
class Decision:
    status: dict
    create: list[dict] = field(default_factory=list)  # in this order
    delete_jobs: list[str] = field(default_factory=list)
    delete_credentials: list[str] = field(default_factory=list)  # build IDs
    events: list[Event] = field(default_factory=list)
    ask: Question | None = None  # decide again with its answer before carrying anything out
    requeue_after: float | None = None  # look again then, even if nothing changes


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _build_of(job: dict) -> str:
    return (job["metadata"].get("labels") or {}).get(labels.BUILD_ID, "")


def active(job: dict) -> bool:
    """May this Job's pod still run (and need the build's credentials)?"""
    return not (true_condition(job, "Complete") or true_condition(job, "Failed"))


# -- units in status --

def unit_record(unit: BuildUnit, spec: BuildSpec, attempt: int, started: str) -> dict:
    """A unit as its Job is created: already what observing that Job will say, so that costs no status write."""
    return {"key": unit.key, "platforms": list(unit.platforms), **({"arch": unit.arch} if unit.arch else {}),
            "builtBy": unit.built_by, "attempt": attempt, "job": job_name(spec, unit, attempt), "phase": PENDING,
            "reason": reasons.BUILD_PENDING, "message": WAITING_FOR_POD, "startTime": started}


def unit_of(record: dict) -> BuildUnit:
    return BuildUnit(tuple(record.get("platforms") or ()), record.get("arch"), record.get("key") or "")


def _named(record: dict, several: bool) -> str:
    """How a message names a unit: by its platforms when the build has several units."""
    return f"{', '.join(record['platforms'])}: " if several and record.get("platforms") else ""


# -- the decision --

def decide(facts: Facts) -> Decision:
    meta = facts.obj["metadata"]
    old = facts.obj.get("status") or {}
    generation = meta.get("generation") or 1
    if facts.spec is None:
        return _invalid(facts, old, generation)
    spec = facts.spec
    if old.get("specIdentity") == spec.identity and old.get("buildID"):
        spec = dataclasses.replace(spec, build_id=old["buildID"])  # same image: same build, even at a new generation
    same = old.get("buildID") == spec.build_id
    decision = Decision(status={})
    history = list(old.get("history") or [])

    for job in facts.jobs:  # a new build supersedes whatever still runs for an older one
        other = _build_of(job)
        if other != spec.build_id and active(job):
            decision.delete_jobs.append(job["metadata"]["name"])
            if old.get("buildID") == other and old.get("phase") in (BUILD_PENDING, BUILDING) and \
                    all(item.get("buildID") != other for item in history):
                history = statuses.with_history(history, statuses.build_record(
                    old, CANCELLED, reasons.SUPERSEDED, labels.iso(facts.now)), spec.history_limit)
                decision.events.append(("Normal", "BuildSuperseded", f"build {other} superseded by {spec.build_id}"))
    carried = old if same else {}
    view = statuses.BuildStatus(spec, generation, carried, history)

    if spec.suspend:
        _suspend(facts, spec, old, same, view, decision)
    elif same and old.get("phase") in (BUILD_SUCCEEDED, BUILD_FAILED):
        decision.status = view.keep()
    elif not same or not old.get("units") or old.get("phase") == CANCELLED:
        _start(facts, spec, carried, view, decision)
    else:
        _follow(facts, spec, old, view, decision)
    _credentials_rule(facts, spec, decision)
    _trim_history(facts, spec, decision)
    return decision


def _invalid(facts: Facts, old: dict, generation: int) -> Decision:
    """Nothing can be built: stop whatever runs (it could still push) and remove its credentials."""
    decision = Decision(status=statuses.invalid_build_status(generation, facts.problem or "", old.get("history")))
    running = [job for job in facts.jobs if active(job)]
    decision.delete_jobs = [job["metadata"]["name"] for job in running]
    decision.delete_credentials = sorted(facts.credentials)
    if running and old.get("phase") in (BUILD_PENDING, BUILDING):
        history = statuses.with_history(old.get("history"), statuses.build_record(
            old, CANCELLED, reasons.INVALID_SPEC, labels.iso(facts.now)), statuses.DEFAULT_HISTORY_LIMIT)
        decision.status["history"] = history
        decision.events.append(("Warning", "BuildCancelled", f"build {old.get('buildID')} cancelled: the spec is invalid"))
    return decision


def _suspend(facts: Facts, spec: BuildSpec, old: dict, same: bool, view: statuses.BuildStatus,
             decision: Decision) -> None:
    running = [j["metadata"]["name"] for j in facts.jobs if _build_of(j) == spec.build_id and active(j)]
    decision.delete_jobs += running
    if same and old.get("phase") in (BUILD_SUCCEEDED, BUILD_FAILED):
        decision.status = view.keep()
        return
    if running or (same and old.get("phase") in (BUILD_PENDING, BUILDING)):
        decision.events.append(("Normal", "BuildCancelled", f"build {spec.build_id} cancelled: spec.suspend is true"))
        view.history = statuses.with_history(view.history, statuses.build_record(
            {**view.carried, "buildID": spec.build_id}, CANCELLED, reasons.SUSPENDED, labels.iso(facts.now)), spec.history_limit)
    decision.status = view.make(CANCELLED, reasons.SUSPENDED, "suspended: nothing is built until spec.suspend is false")
    decision.status.pop("retry", None)


def _backoff_key(facts: Facts, spec: BuildSpec) -> str:
    return f"{spec.identity}/{facts.logins_revision}"


def _waiting(facts: Facts, spec: BuildSpec, carried: dict) -> float | None:
    """Seconds until a blocked build may look again; None when it may look now (or its cause changed)."""
    retry = carried.get("retry") or {}
    if retry.get("key") != _backoff_key(facts, spec) or not retry.get("after"):
        return None
    left = (_parse(retry["after"]) - facts.now).total_seconds()
    return left if left > 0 else None


def _block(facts: Facts, spec: BuildSpec, carried: dict, view: statuses.BuildStatus, decision: Decision,
           blocked: Blocked) -> None:
    """Pending and blocked: report why, and when kiln looks again (after a fixed wait, or exponential backoff)."""
    if blocked.after is not None:
        decision.status = view.blocked(blocked.reason, blocked.message, credentials=blocked.credentials,
                                       stalled=blocked.stalled)
        decision.requeue_after = blocked.after
        return
    retry = carried.get("retry") or {}
    key = _backoff_key(facts, spec)
    count = retry.get("count", 0) + 1 if retry.get("key") == key and retry.get("reason") == blocked.reason else 1
    delay = min(BACKOFF_BASE * 2 ** (count - 1), BACKOFF_CAP)
    after = labels.iso(facts.now + datetime.timedelta(seconds=delay))
    decision.status = view.blocked(blocked.reason, f"{blocked.message}; kiln looks again at {after}",
                                   credentials=blocked.credentials, stalled=blocked.stalled)
    decision.status["retry"] = {"reason": blocked.reason, "count": count, "after": after, "key": key}
    decision.requeue_after = delay


# -- starting a build: a chain of policies --

@dataclass(frozen=True)
class Blocked:
    """The build cannot start yet: why, and how kiln looks again (after exponential backoff, or `after` seconds)."""
    reason: str
    message: str
    credentials: bool = False  # CredentialsReady is False for this reason
    stalled: bool = False  # it waits for a change from the user
    after: float | None = None  # None: exponential backoff
    undo: bool = False  # delete what an earlier, refused attempt created


@dataclass(frozen=True)
class Unchanged:
    """Blocked a moment ago, and nothing changed since: keep the status, look again when the backoff ends."""
    after: float


@dataclass(frozen=True)
class Ask:
    question: Question


Verdict = Blocked | Unchanged | Ask | None  # None: this policy lets the build go on


def _unchanged_since_blocked(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    wait = _waiting(facts, spec, carried)
    return Unchanged(wait) if wait is not None and facts.refused is None else None


def _logins_usable(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    problem = facts.logins
    if isinstance(problem, CredentialsProblem):
        return Blocked(problem.reason, problem.message, credentials=True, stalled=problem.stalls)
    return None


def _its_turn_in_the_namespace(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    limit = facts.settings.max_builds_per_namespace
    running, ahead = facts.namespace_load
    if limit and (running >= limit or ahead >= limit - running):
        return Blocked(reasons.QUEUED, f"queued: {running} of at most {limit} builds run in namespace {spec.namespace}; "
                                       f"{ahead} waiting before this one (place {ahead + 1} in line)", after=WAIT_FOR_VOLUME)
    return None


def _cache_volume_free(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    if facts.volume_holder:
        return Blocked(reasons.WAITING_FOR_CACHE_VOLUME, f"cache volume {spec.cache.volume} is in use by "
                                                         f"{facts.volume_holder}", after=WAIT_FOR_VOLUME)
    return None


def _push_allowed(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    check = PushCheck(_push_targets(spec))
    if check.repositories and check not in facts.answers:
        return Ask(check)
    answer = facts.answers.get(check)
    if isinstance(answer, RegistryProblem):
        return Blocked(answer.reason, f"push check: {answer.message}", credentials=not answer.transient,
                       stalled=not answer.transient)
    return None


def _children_accepted(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    if facts.refused:  # the children created before the refusal go again: a partial build can only mislead
        what, message = facts.refused
        return Blocked(reasons.CREATE_REJECTED, f"the API server refused to create {what}: {message}", stalled=True,
                       undo=True)
    return None


# What a build needs before its children are created, asked in this order; the first that says no decides.
START_POLICIES = (
    ("blocked a moment ago, nothing changed since", _unchanged_since_blocked),
    ("its logins are Ready", _logins_usable),
    ("its turn in the namespace", _its_turn_in_the_namespace),
    ("its local cache volume is free", _cache_volume_free),
    ("the registries accept its pushes", _push_allowed),
    ("the API server accepted its children", _children_accepted),
)


def start_verdict(facts: Facts, spec: BuildSpec, carried: dict) -> tuple[str, Verdict]:
    """The first policy that keeps the build from starting, and its verdict; ("", None) when none does."""
    for name, policy in START_POLICIES:
        if (verdict := policy(facts, spec, carried)) is not None:
            return name, verdict
    return "", None


def _start(facts: Facts, spec: BuildSpec, carried: dict, view: statuses.BuildStatus, decision: Decision) -> None:
    """A build that has no units in status yet: the start policies, then its children."""
    attempt = max((u.get("attempt", 0) for u in carried.get("units") or []), default=carried.get("attempt", -1)) + 1 \
        if carried.get("phase") == CANCELLED else 0
    try:
        plan = build_plan(spec, facts.ready_archs)
    except InvalidSpec as exc:
        decision.status = statuses.invalid_build_status(view.generation, str(exc), view.history)
        return
    _, verdict = start_verdict(facts, spec, carried)
    if isinstance(verdict, Unchanged):
        _keep_until(view, decision, verdict.after)
    elif isinstance(verdict, Ask):
        decision.ask = verdict.question
    elif isinstance(verdict, Blocked):
        _block(facts, spec, carried, view, decision, verdict)
        if verdict.undo:
            decision.delete_jobs += [job_name(spec, unit, attempt) for unit in plan]
            decision.delete_credentials.append(spec.build_id)
    else:
        units = [unit_record(unit, spec, attempt, labels.iso(facts.now)) for unit in plan]
        decision.create = render_build(spec, facts.logins, plan, facts.settings, attempt)
        decision.events.append(("Normal", "BuildStarted", f"build {spec.build_id} started: {len(plan)} BuildKit pod(s)"))
        decision.status = _progress(view, BUILD_PENDING, reasons.BUILD_PENDING, WAITING_FOR_POD, units)
        _look_again(decision, POD_PATIENCE)  # if no pod comes, the Job's events say why


def _push_targets(spec: BuildSpec) -> tuple[str, ...]:
    targets = [spec.output.image] if spec.output.push else []
    if spec.cache.type == "registry" and spec.cache.ref:
        targets.append(split_tagged(spec.cache.ref)[0])
    return tuple(dict.fromkeys(targets))


# -- following a running build --

def _done(record: dict) -> bool:
    return record["phase"] in (SUCCEEDED, FAILED)


def _follow(facts: Facts, spec: BuildSpec, old: dict, view: statuses.BuildStatus, decision: Decision) -> None:
    jobs = {job["metadata"]["name"]: job for job in facts.jobs}
    records = [dict(r) for r in old["units"]]
    several = len(records) > 1
    retries: list[dict] = []
    for record in records:
        if _done(record):  # recorded once seen: a Job deleted since loses nothing
            continue
        job = jobs.get(record["job"])
        state = observe_unit(job, facts.pods.get(record["job"])) if job else \
            UnitState(FAILED, reasons.JOB_LOST, "its Job was deleted before the build finished", retryable=True)
        state = _image_pull_patience(state, facts, record)
        if job and record["job"] not in facts.pods and state.phase == PENDING:
            state = _why_no_pod(facts, job, state, decision)
            if decision.ask:
                return
        if job and record["job"] not in facts.pods and state.phase in (SUCCEEDED, FAILED):
            state = _pod_on_its_way(facts, state, decision)
        if state.phase == SUCCEEDED:
            state = _with_digest(facts, spec, record, state, decision)
            if decision.ask:
                return
        record.update(_recorded(state, record))
        if state.phase == FAILED and state.retryable and record["attempt"] < spec.retries:
            retries.append(record)
    retrying = {id(r) for r in retries}
    failed = next((r for r in records if r["phase"] == FAILED and id(r) not in retrying), None)
    if failed:
        _fail(facts, spec, records, failed, several, view, decision)
    elif retries:
        _retry(facts, spec, records, retries, several, view, decision)
    elif all(r["phase"] == SUCCEEDED for r in records):
        _conclude(facts, spec, records, view, decision)
    else:
        running = any(r["phase"] in (RUNNING, SUCCEEDED) for r in records)
        waiting = next((r for r in records if r["phase"] == PENDING), records[0])
        message = "building" if running else f"{_named(waiting, several)}{waiting.get('message') or 'waiting'}"
        reason = reasons.BUILDING if running else waiting.get("reason") or reasons.BUILD_PENDING
        decision.status = _progress(view, BUILDING if running else BUILD_PENDING, reason, message, records)
        pulls = [_parse(r["pullFailingSince"]) for r in records if r.get("pullFailingSince")]
        if pulls:  # nothing else may happen when the patience runs out
            grace = datetime.timedelta(seconds=facts.settings.image_pull_grace)
            _look_again(decision, max((min(pulls) + grace - facts.now).total_seconds(), 1.0))


def _progress(view: statuses.BuildStatus, phase: str, reason: str, message: str, records: list[dict]) -> dict:
    status = view.make(phase, reason, message, attempt=max(r["attempt"] for r in records),
                       job_names=[r["job"] for r in records])
    starts = [r["startTime"] for r in records if r.get("startTime")]
    if starts:
        status["startTime"] = min(starts)
    status["units"] = records
    return status


def _image_pull_patience(state: UnitState, facts: Facts, record: dict) -> UnitState:
    """The kubelet keeps retrying a pull by itself: kiln reports it, recreates nothing, and gives up after a while."""
    if state.reason != reasons.BUILDER_IMAGE_PULL_FAILED or state.phase != FAILED or not state.retryable:
        record.pop("pullFailingSince", None)
        return state
    since = record.setdefault("pullFailingSince", labels.iso(facts.now))
    if (facts.now - _parse(since)).total_seconds() < facts.settings.image_pull_grace:
        return dataclasses.replace(state, phase=PENDING, retryable=False)
    return dataclasses.replace(state, retryable=False,
                               message=f"{state.message}; still failing after {facts.settings.image_pull_grace:g}s")


def _look_again(decision: Decision, seconds: float) -> None:
    """Look at this build again within `seconds`, or sooner if something else asked for sooner."""
    decision.requeue_after = seconds if decision.requeue_after is None else min(decision.requeue_after, seconds)


def _why_no_pod(facts: Facts, job: dict, state: UnitState, decision: Decision) -> UnitState:
    """A Job that makes no pod: Pod Security admission refusing it fails the build at once (it will not pass
    by waiting); anything else the Job controller reports (a quota, say) is shown while kiln waits."""
    created = job["metadata"].get("creationTimestamp")
    if not created or (facts.now - _parse(created)).total_seconds() < POD_PATIENCE:
        _look_again(decision, POD_PATIENCE)
        return state
    question = JobEvents(job["metadata"]["name"])
    if question not in facts.answers:
        decision.ask = question
        return state
    refusals = [message for reason, message in facts.answers[question] if reason == "FailedCreate"]
    _look_again(decision, POD_PATIENCE)
    if any("violates PodSecurity" in message for message in refusals):
        return UnitState(FAILED, reasons.POD_SECURITY_REJECTED, "the namespace's Pod Security admission refuses the "
                         f"build pod ({refusals[-1][-300:]}); rootless BuildKit needs the privileged level, see the README")
    if refusals:
        return dataclasses.replace(state, reason=reasons.POD_CREATE_FAILED,
                                   message=f"the Job cannot create its pod: {refusals[-1][-300:]}")
    return state


def _pod_on_its_way(facts: Facts, state: UnitState, decision: Decision) -> UnitState:
    """A Job concluded, and kiln has seen no pod of it: Jobs and Pods come on separate watch streams, and a busy
    operator may get a fast build's Job before its pod. The pod's final state (digest, exit code, log) is on its
    way: kiln waits for it a while, and only then concludes from the Job alone (the pod was deleted, or collected).
    Its twin for a pod kiln last saw before its end is outcomes._ending, which needs no bound: that pod's end comes."""
    ended = state.completion_time
    waited = (facts.now - _parse(ended)).total_seconds() if ended else POD_PATIENCE
    if waited >= POD_PATIENCE:
        return state
    _look_again(decision, POD_PATIENCE - waited)
    return UnitState(RUNNING, reasons.BUILDING, "building")


def _with_digest(facts: Facts, spec: BuildSpec, record: dict, state: UnitState, decision: Decision) -> UnitState:
    """A unit's digest, from its termination message, else (one pod that pushed tags) from the registry."""
    if not state.digest and spec.output.push:
        if unit_of(record).by_digest:  # nothing else names what it pushed
            return dataclasses.replace(state, phase=FAILED, reason=reasons.DIGEST_NOT_REPORTED, retryable=True,
                                       message="the image was pushed by digest, but its digest did not reach kiln")
        question = TagDigest(spec.output.image, spec.output.tags[0])
        answer = facts.answers.get(question)
        if answer is None:
            decision.ask = question
            return state
        if isinstance(answer, RegistryProblem):
            return dataclasses.replace(state, phase=FAILED, reason=reasons.DIGEST_NOT_REPORTED, retryable=answer.transient,
                                       message=f"the build reported no digest, and {answer.message}")
        state = dataclasses.replace(state, digest=answer[0], media_type=answer[1])
    pod = facts.pods.get(record["job"])
    if pod is None:
        return state
    log = BuildLog(pod["metadata"]["name"])
    if log not in facts.answers:
        decision.ask = log
        return state
    cached, total = facts.answers[log]
    return dataclasses.replace(state, cached_steps=cached, total_steps=total)


def _recorded(state: UnitState, record: dict) -> dict:
    found = {"phase": state.phase, "reason": state.reason, "message": state.message, "digest": state.digest,
             "mediaType": state.media_type, "logExcerpt": state.log_excerpt, "startTime": record.get("startTime"),
             "completionTime": state.completion_time, "cachedSteps": state.cached_steps,
             "totalSteps": state.total_steps}
    return {k: v for k, v in found.items() if v not in (None, "")}


_RESULT_FIELDS = ("reason", "message", "digest", "mediaType", "logExcerpt", "completionTime", "pullFailingSince",
                  "cachedSteps", "totalSteps")


def _retry(facts: Facts, spec: BuildSpec, records: list[dict], retries: list[dict], several: bool,
           view: statuses.BuildStatus, decision: Decision) -> None:
    """Transient failures run again as a new attempt, with the build's credentials made again."""
    if isinstance(facts.logins, CredentialsProblem):
        _block(facts, spec, view.carried, view, decision,
               Blocked(facts.logins.reason, f"a retry waits: {facts.logins.message}", credentials=True))
        decision.status["units"] = records
        decision.status["phase"] = BUILDING
        return
    decision.create += render_build(spec, facts.logins, (), facts.settings)  # the Secret, made again if it is gone
    running = {j["metadata"]["name"] for j in facts.jobs if active(j)}
    for record in retries:
        unit = unit_of(record)
        if record["job"] in running:
            decision.delete_jobs.append(record["job"])
        decision.events.append(("Warning", "BuildRetried", f"{_named(record, several)}{record['reason']}: "
                                f"{record['message']}; attempt {record['attempt'] + 2} of {spec.retries + 1}"))
        reason = record["reason"]
        for key in _RESULT_FIELDS:
            record.pop(key, None)
        record.update(attempt=record["attempt"] + 1, phase=PENDING, job=job_name(spec, unit, record["attempt"] + 1),
                      reason=reasons.BUILD_PENDING, message=WAITING_FOR_POD)
        decision.create.append(render_job(spec, unit, facts.settings, attempt=record["attempt"],
                                          buildkitd=tuple(buildkitd_files(facts.logins))))
    decision.status = _progress(view, BUILDING, reasons.BUILDING, f"retrying after {reason}", records)


def _fail(facts: Facts, spec: BuildSpec, records: list[dict], failed: dict, several: bool,
          view: statuses.BuildStatus, decision: Decision) -> None:
    """One unit failed for good: the others stop (no index can be made) and the build fails, naming it."""
    decision.delete_jobs += [j["metadata"]["name"] for j in facts.jobs if _build_of(j) == spec.build_id and active(j)]
    reason = failed.get("reason") or reasons.BUILD_FAILED
    message = f"{_named(failed, several)}{failed.get('message') or 'the build failed'}"
    completion = failed.get("completionTime") or labels.iso(facts.now)
    status = _progress(view, BUILD_FAILED, reason, message, records)
    view.carried = {**view.carried, "startTime": status.get("startTime")}
    decision.status = {**view.failed(failed["job"], reason, message, failed.get("logExcerpt", ""),
                                     [r["job"] for r in records], max(r["attempt"] for r in records), completion,
                                     labels.iso(facts.now)), "units": records}
    decision.events.append(("Warning", "BuildFailed", f"{reason}: {message}"))


def _to_ask_before_concluding(spec: BuildSpec, records: list[dict]) -> tuple[Question | None, list[tuple[str, str, str]]]:
    """The registry question concluding needs (assemble the index of several units' images, or look inside the
    index one pod pushed), or none and the platforms known without one: (platform, digest, built by)."""
    digest = records[0].get("digest")
    if any(unit_of(r).by_digest for r in records):
        return AssembleIndex(spec.output.image, tuple((r["platforms"][0], r["digest"], r.get("mediaType") or "")
                                                      for r in records), spec.output.tags), []
    if spec.output.push and digest and records[0].get("mediaType") not in MANIFEST_MEDIA_TYPES:
        return ImageContents(spec.output.image, digest, tuple(records[0]["platforms"])), []
    if spec.output.push and digest and len(records[0]["platforms"]) == 1:  # one manifest: its platform is the unit's
        return None, [(records[0]["platforms"][0], digest, records[0]["builtBy"])]
    return None, []


def _answered_platforms(question: Question, answer, records: list[dict]) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The pushed digest and the platforms, from the registry's answer to the question concluding asked."""
    if isinstance(question, AssembleIndex):
        digest, images = answer
        built_by = {r["platforms"][0]: r["builtBy"] for r in records}
        return digest, [(p, d, built_by[p]) for p, d in images]
    if isinstance(answer, RegistryProblem):  # a failed look inside is no failure: BuildKit pushed it
        return records[0].get("digest"), []
    return records[0].get("digest"), [(p, d, records[0]["builtBy"]) for p, d in answer]


def _keep_until(view: statuses.BuildStatus, decision: Decision, wait: float) -> None:
    """Blocked a moment ago and nothing changed since: the status as it is, and a look when the backoff ends."""
    decision.status = {**view.carried, "observedGeneration": view.generation, "history": view.history}
    decision.requeue_after = wait


def _conclude(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus,
              decision: Decision) -> None:
    """Every unit pushed: the image (one pod), or the index kiln assembles from several."""
    question, platforms = _to_ask_before_concluding(spec, records)
    digest = records[0].get("digest")
    if question is not None:
        if (wait := _waiting(facts, spec, view.carried)) is not None:  # the registry failed a moment ago
            _keep_until(view, decision, wait)
            return
        answer = facts.answers.get(question)
        if answer is None:
            decision.ask = question
            return
        if isinstance(answer, RegistryProblem) and isinstance(question, AssembleIndex):
            if answer.transient:
                _block(facts, spec, view.carried, view, decision,
                       Blocked(answer.reason, f"the images are built; assembling the index: {answer.message}"))
                decision.status.update(phase=BUILDING, units=records)
            else:
                _fail(facts, spec, records, {**records[0], "reason": answer.reason,
                                             "message": f"assembling the index: {answer.message}"}, False, view, decision)
            return
        digest, platforms = _answered_platforms(question, answer, records)
    _succeed(facts, spec, records, view, decision, digest, platforms)


def _succeed(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus, decision: Decision,
             digest: str | None, platforms: list[tuple[str, str, str]]) -> None:
    status = _progress(view, BUILD_SUCCEEDED, reasons.SUCCEEDED, "", records)
    view.carried = {**view.carried, "startTime": status.get("startTime")}
    completion = max((r["completionTime"] for r in records if r.get("completionTime")), default=labels.iso(facts.now))
    decision.status = {**view.succeeded(
        [r["job"] for r in records], max(r["attempt"] for r in records), completion, digest,
        [{"platform": p, "digest": d, "builtBy": b} for p, d, b in platforms],
        sum(r.get("cachedSteps", 0) for r in records), sum(r.get("totalSteps", 0) for r in records), labels.iso(facts.now)),
        "units": records}
    decision.status.pop("retry", None)
    decision.events.append(("Normal", "BuildSucceeded", f"pushed {decision.status.get('image') or spec.output.image}"))


# -- rules that hold whatever was decided --

def _credentials_rule(facts: Facts, spec: BuildSpec, decision: Decision) -> None:
    """A build's Secret exists exactly while one of its Jobs may still run."""
    deleted = set(decision.delete_jobs)
    running = {_build_of(j) for j in facts.jobs if active(j) and j["metadata"]["name"] not in deleted}
    units = decision.status.get("units") or []
    # A unit recorded as created and not finished may run even if the watch has not shown its Job yet.
    if any(obj["kind"] == "Job" for obj in decision.create) or (
            decision.status.get("buildID") == spec.build_id and any(not _done(u) for u in units)
            and decision.status.get("phase") in (BUILD_PENDING, BUILDING)):
        running.add(spec.build_id)
    decision.delete_credentials = sorted(set(decision.delete_credentials) | (facts.credentials - running))
    decision.create = [obj for obj in decision.create if obj["kind"] == "Job" or spec.build_id in running]


def _trim_history(facts: Facts, spec: BuildSpec, decision: Decision) -> None:
    """Jobs of builds that fell out of the history (and are not the current one) are deleted."""
    keep = {spec.build_id} | {item.get("buildID") for item in decision.status.get("history") or []}
    decision.delete_jobs += [j["metadata"]["name"] for j in facts.jobs
                             if _build_of(j) not in keep and j["metadata"]["name"] not in decision.delete_jobs]
