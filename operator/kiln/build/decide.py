"""decide: everything known about one ImageBuild -> what to do next and the status to report (pure).

gather collects the inputs (Facts); carry_out creates and deletes what the Decision says, rendering
its children with build/render.py. Nothing here reads a clock, a cluster or a registry: when a
decision needs a registry's answer (may we push? which digest does the tag have? the assembled
index), it asks a Question (build/questions.py), and the caller decides again with the answer in
Facts.answers.

Every step returns a Decision; none changes one. A build with units in status is followed (each
unit seen, then failed, retried, concluded or still waiting); one without is started, after the
start policies (START_POLICIES, in order) let it. Two rules then hold whatever was decided: the
build's Secret exists exactly while a Job of it may run, and Jobs of builds out of the history go.

The plan of a build (its units: which pod builds which platforms) is written into status when
the build starts, and the build concludes against that plan, never against whatever Jobs exist.
A unit's result is recorded in status as soon as it is seen, so a Job deleted later loses nothing.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
from dataclasses import dataclass, field

from kiln.build import status as statuses
from kiln.build.credentials import CredentialsProblem, ResolvedLogin
from kiln.build.outcomes import (
    FAILED,
    NODE_NOT_READY,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING_FOR_NODE,
    WAITING_FOR_POD,
    UnitState,
    observe_unit,
    ran,
    redacted,
    sbom_generator_failure,
    true_condition,
)
from kiln.build.platforms import BuildUnit, build_plan
from kiln.build.questions import (
    AssembleIndex,
    BuildLog,
    ImageContents,
    JobEvents,
    PlatformImage,
    PushCheck,
    Question,
    RegistryProblem,
    Signature,
    SignImage,
    TagDigest,
)
from kiln.build.render import job_name
from kiln.build.status import BUILDING, CANCELLED
from kiln.build.status import FAILED as BUILD_FAILED
from kiln.build.status import PENDING as BUILD_PENDING
from kiln.build.status import SUCCEEDED as BUILD_SUCCEEDED
from kiln.spec import labels, reasons
from kiln.spec.parse import BuildSpec, InvalidSpec, spec_identity
from kiln.spec.references import MANIFEST_MEDIA_TYPES, split_tagged
from kiln.spec.settings import Settings

Event = tuple[str, str, str]  # (Normal|Warning, reason, message)
# Blocked and stalled builds look again after 10s, 20s, 40s ... at most every 10 minutes, and at once
# when their spec or a login they use changes.
BACKOFF_BASE, BACKOFF_CAP = 10.0, 600.0
WAIT_FOR_VOLUME = 15.0
# A Job with no pod after this long is asked why (Pod Security admission, a quota); then every this long again.
POD_PATIENCE = 10.0


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
    mounts: CredentialsProblem | None = None  # why the build may not mount a Secret it names (before it starts)
    mounts_revision: str = ""  # changes when a Secret it mounts changes (before it starts)
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)  # kept out of what status shows


@dataclass(frozen=True)
class Decision:
    status: dict = field(default_factory=dict)
    credentials: bool = False  # create the build's Secret (again, if it is gone), before its Jobs
    jobs: tuple[tuple[BuildUnit, int], ...] = ()  # Jobs to create, in this order: (unit, attempt)
    delete_jobs: tuple[str, ...] = ()
    delete_credentials: tuple[str, ...] = ()  # build IDs
    delete_logs: tuple[str, ...] = ()  # build IDs that left the history: their kept logs go (a warm build's have no Job)
    events: tuple[Event, ...] = ()
    ask: Question | None = None  # decide again with its answer before carrying anything out
    requeue_after: float | None = None  # look again then, even if nothing changes

    def then(self, later: Decision) -> Decision:
        """This decision's deletes and events, followed by everything of `later`."""
        return dataclasses.replace(later, delete_jobs=self.delete_jobs + later.delete_jobs,
                                   delete_credentials=self.delete_credentials + later.delete_credentials,
                                   delete_logs=self.delete_logs + later.delete_logs,
                                   events=self.events + later.events)

    def sooner(self, seconds: float | None) -> Decision:
        """Look again within `seconds` too, if that is sooner."""
        if seconds is None or (self.requeue_after is not None and self.requeue_after <= seconds):
            return self
        return dataclasses.replace(self, requeue_after=seconds)


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _build_of(job: dict) -> str:
    return (job["metadata"].get("labels") or {}).get(labels.BUILD_ID, "")


def active(job: dict) -> bool:
    """May this Job's pod still run (and need the build's credentials)?"""
    return not (true_condition(job, "Complete") or true_condition(job, "Failed"))


def _running_jobs(facts: Facts, build_id: str) -> tuple[str, ...]:
    return tuple(j["metadata"]["name"] for j in facts.jobs if _build_of(j) == build_id and active(j))


# -- units in status --

def unit_record(unit: BuildUnit, spec: BuildSpec, attempt: int, started: str, logins_revision: str) -> dict:
    """A unit as its Job is created: already what observing that Job will say, so that costs no status write.
    loginsRevision: the credentials it was given (a refusal with older ones than the logins hold is retried)."""
    return {"key": unit.key, "platforms": list(unit.platforms), **({"arch": unit.arch} if unit.arch else {}),
            "builtBy": unit.built_by, "attempt": attempt, "retries": 0, "job": job_name(spec, unit, attempt),
            "phase": PENDING, "reason": reasons.BUILD_PENDING, "message": WAITING_FOR_POD, "startTime": started,
            "loginsRevision": logins_revision}


def unit_of(record: dict) -> BuildUnit:
    return BuildUnit(tuple(record.get("platforms") or ()), record.get("arch"), record.get("key") or "")


def _named(record: dict, several: bool) -> str:
    """How a message names a unit: by its platforms when the build has several units."""
    return f"{', '.join(record['platforms'])}: " if several and record.get("platforms") else ""


# -- the decision --

def settled(obj: dict) -> bool:
    """A finished (or invalid) build of the current spec and rebuild token: only an edit or a new token gives it
    work again, so nothing else (the resync, a login, its Jobs and Pods) need look at it."""
    status, meta = obj.get("status") or {}, obj["metadata"]
    return status.get("phase") in (BUILD_SUCCEEDED, BUILD_FAILED, CANCELLED) \
        and status.get("observedGeneration") == meta.get("generation") and meta.get("resourceVersion") is not None \
        and status.get("specIdentity") == spec_identity(obj)


def current_spec(facts: Facts) -> BuildSpec:
    """The spec with the platform a build that names none is for (the operator's default, if set), and the ID of
    the build it asks for: an edit that leaves the image as it was (same identity)
    keeps the build that runs or ran, even at a new generation. A spec that asks again for a build that ran
    before another (a rebuild token reverted, as Argo CD restoring an older manifest does) is a new build:
    that build's Jobs and result are of the past, and the tag has moved since."""
    old = facts.obj.get("status") or {}
    spec = facts.spec
    if not spec.platforms and facts.settings.default_platform:  # KILN_DEFAULT_PLATFORM
        spec = dataclasses.replace(spec, platforms=(facts.settings.default_platform,))
    if old.get("specIdentity") == spec.identity and old.get("buildID"):
        return dataclasses.replace(spec, build_id=old["buildID"])
    earlier = {item.get("buildID") for item in old.get("history") or []} | {_build_of(job) for job in facts.jobs}
    if old.get("buildID") and spec.build_id != old["buildID"] and spec.build_id in earlier:
        again = hashlib.sha256(f"{spec.build_id}/{old['buildID']}".encode()).hexdigest()[:6]
        return dataclasses.replace(spec, build_id=f"{spec.build_id.split('-')[0]}-{again}")
    return spec


def decide(facts: Facts) -> Decision:
    old = facts.obj.get("status") or {}
    generation = facts.obj["metadata"].get("generation") or 1
    if facts.spec is None:
        return _invalid(facts, old, generation)
    spec = current_spec(facts)
    same = old.get("buildID") == spec.build_id
    superseded, history = _supersede(facts, spec, old)
    view = statuses.BuildStatus(spec, generation, old if same else {}, history)

    if spec.suspend:
        decision = _suspend(facts, spec, old, same, view)
    elif same and old.get("phase") in (BUILD_SUCCEEDED, BUILD_FAILED):
        decision = Decision(status=view.keep())
    elif not same or not old.get("units") or old.get("phase") == CANCELLED:
        decision = _start(facts, spec, view)
    else:
        decision = _follow(facts, spec, old, view)
    if decision.ask is not None:
        return decision
    if decision.status.get("buildID") == spec.build_id:  # its place in the namespace's line
        requested = old.get("requestTime") if same and old.get("requestTime") else labels.iso(facts.now)
        decision = dataclasses.replace(decision, status={**decision.status, "requestTime": requested})
    return _trim_history(facts, spec, _credentials_rule(facts, spec, _orphans_rule(facts, spec,
                                                                                   superseded.then(decision))))


def _supersede(facts: Facts, spec: BuildSpec, old: dict) -> tuple[Decision, list[dict]]:
    """A new build supersedes whatever still runs for an older one; the older one, if it was current, is
    recorded as cancelled. The deletes and events, and the history."""
    history, deletes, events = list(old.get("history") or []), [], []
    for job in facts.jobs:
        other = _build_of(job)
        if other != spec.build_id and active(job):
            deletes.append(job["metadata"]["name"])
            if old.get("buildID") == other and old.get("phase") in (BUILD_PENDING, BUILDING) and \
                    all(item.get("buildID") != other for item in history):
                history = statuses.with_history(history, statuses.build_record(
                    old, CANCELLED, reasons.SUPERSEDED, labels.iso(facts.now)), spec.history_limit)
                events.append(("Normal", "BuildSuperseded", f"build {other} superseded by {spec.build_id}"))
    return Decision(delete_jobs=tuple(deletes), events=tuple(events)), history


def _invalid(facts: Facts, old: dict, generation: int) -> Decision:
    """Nothing can be built: stop whatever runs (it could still push) and remove its credentials."""
    status = statuses.invalid_build_status(generation, spec_identity(facts.obj), facts.problem or "", old.get("history"))
    running = tuple(job["metadata"]["name"] for job in facts.jobs if active(job))
    events: tuple[Event, ...] = ()
    if running and old.get("phase") in (BUILD_PENDING, BUILDING):
        status["history"] = statuses.with_history(old.get("history"), statuses.build_record(
            old, CANCELLED, reasons.INVALID_SPEC, labels.iso(facts.now)), statuses.DEFAULT_HISTORY_LIMIT)
        events = (("Warning", "BuildCancelled", f"build {old.get('buildID')} cancelled: the spec is invalid"),)
    return Decision(status=status, delete_jobs=running, delete_credentials=tuple(sorted(facts.credentials)),
                    events=events)


def _suspend(facts: Facts, spec: BuildSpec, old: dict, same: bool, view: statuses.BuildStatus) -> Decision:
    running = _running_jobs(facts, spec.build_id)
    if same and old.get("phase") in (BUILD_SUCCEEDED, BUILD_FAILED):
        return Decision(status=view.keep(), delete_jobs=running)
    events: tuple[Event, ...] = ()
    if running or (same and old.get("phase") in (BUILD_PENDING, BUILDING)):
        events = (("Normal", "BuildCancelled", f"build {spec.build_id} cancelled: spec.suspend is true"),)
        view = dataclasses.replace(view, history=statuses.with_history(view.history, statuses.build_record(
            {**view.carried, "buildID": spec.build_id}, CANCELLED, reasons.SUSPENDED, labels.iso(facts.now)),
            spec.history_limit))
    status = view.make(CANCELLED, reasons.SUSPENDED, "suspended: nothing is built until spec.suspend is false")
    status.pop("retry", None)
    return Decision(status=status, delete_jobs=running, events=events)


def _backoff_key(facts: Facts, spec: BuildSpec) -> str:
    return f"{spec.identity}/{facts.logins_revision}/{facts.mounts_revision}"


def _waiting(facts: Facts, spec: BuildSpec, carried: dict) -> float | None:
    """Seconds until a blocked build may look again; None when it may look now (or its cause changed)."""
    retry = carried.get("retry") or {}
    if retry.get("key") != _backoff_key(facts, spec) or not retry.get("after"):
        return None
    left = (_parse(retry["after"]) - facts.now).total_seconds()
    return left if left > 0 else None


def _block(facts: Facts, spec: BuildSpec, view: statuses.BuildStatus, blocked: Blocked) -> Decision:
    """Pending and blocked: report why, and when kiln looks again (after a fixed wait, or exponential backoff)."""
    if blocked.after is not None:
        return Decision(status=view.blocked(blocked.reason, blocked.message, credentials=blocked.credentials,
                                            stalled=blocked.stalled), requeue_after=blocked.after)
    retry = view.carried.get("retry") or {}
    key = _backoff_key(facts, spec)
    count = retry.get("count", 0) + 1 if retry.get("key") == key and retry.get("reason") == blocked.reason else 1
    delay = min(BACKOFF_BASE * 2 ** (count - 1), BACKOFF_CAP)
    after = labels.iso(facts.now + datetime.timedelta(seconds=delay))
    status = view.blocked(blocked.reason, f"{blocked.message}; kiln looks again at {after}",
                          credentials=blocked.credentials, stalled=blocked.stalled)
    status["retry"] = {"reason": blocked.reason, "count": count, "after": after, "key": key}
    return Decision(status=status, requeue_after=delay)


def _keep_until(view: statuses.BuildStatus, wait: float) -> Decision:
    """Blocked a moment ago and nothing changed since: the status as it is, and a look when the backoff ends."""
    return Decision(status={**view.carried, "observedGeneration": view.generation, "history": view.history},
                    requeue_after=wait)


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


def _secrets_opted_in(facts: Facts, spec: BuildSpec, carried: dict) -> Verdict:
    if facts.mounts is not None:
        return Blocked(facts.mounts.reason, facts.mounts.message, credentials=True, stalled=True)
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
    ("the Secrets it mounts opted in", _secrets_opted_in),
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


def _start(facts: Facts, spec: BuildSpec, view: statuses.BuildStatus) -> Decision:
    """A build that has no units in status yet: the start policies, then its children."""
    carried = view.carried
    # A build resumed after a suspend goes on numbering its Jobs (the suspended ones may still be being deleted).
    earlier = max((u.get("attempt", 0) for u in carried.get("units") or []), default=carried.get("attempt"))
    attempt = 0 if earlier is None else earlier + 1
    # Until it starts, its status shows no plan: the suspended units are gone, and neither followed nor counted.
    view = dataclasses.replace(view, carried={
        **{k: v for k, v in carried.items() if k not in ("units", "jobName", "startTime", "attempt")},
        **({"attempt": earlier} if earlier is not None else {})})
    try:
        plan = build_plan(spec, facts.ready_archs)
    except InvalidSpec as exc:
        return Decision(status=statuses.invalid_build_status(view.generation, spec.identity, str(exc), view.history))
    _, verdict = start_verdict(facts, spec, carried)
    if isinstance(verdict, (Blocked, Unchanged)) and _waited_too_long(facts, spec, carried):
        why = verdict.message if isinstance(verdict, Blocked) else \
            next((c.get("message") for c in carried.get("conditions") or [] if c.get("type") == "Ready"), "")
        status = view.never_started(reasons.TIMED_OUT, f"waited longer than spec.timeout to start ({why})",
                                    labels.iso(facts.now))
        return Decision(status=status, events=(("Warning", "BuildFailed", f"{reasons.TIMED_OUT}: {why}"),))
    if isinstance(verdict, Unchanged):
        return _keep_until(view, verdict.after)
    if isinstance(verdict, Ask):
        return Decision(ask=verdict.question)
    if isinstance(verdict, Blocked):
        blocked = _block(facts, spec, view, verdict)
        if not verdict.undo:
            return blocked
        return dataclasses.replace(blocked, delete_jobs=tuple(job_name(spec, unit, attempt) for unit in plan),
                                   delete_credentials=(spec.build_id,))
    units = [unit_record(unit, spec, attempt, labels.iso(facts.now), facts.logins_revision) for unit in plan]
    return Decision(status=_progress(view, BUILD_PENDING, reasons.BUILD_PENDING, WAITING_FOR_POD, units),
                    credentials=True, jobs=tuple((unit, attempt) for unit in plan),
                    events=(("Normal", "BuildStarted", f"build {spec.build_id} started: {len(plan)} " + (
                        "unit(s) on warm builders" if spec.builder.warm else "BuildKit pod(s)")),),
                    requeue_after=POD_PATIENCE)  # if no pod comes, the Job's events say why


def _waited_too_long(facts: Facts, spec: BuildSpec, carried: dict) -> bool:
    """A build that has waited to start (queued, blocked) for longer than spec.timeout fails: a pipeline waiting
    for it hears back, not never."""
    requested = carried.get("requestTime")
    return bool(requested) and (facts.now - _parse(requested)).total_seconds() > spec.timeout_seconds


def _push_targets(spec: BuildSpec) -> tuple[str, ...]:
    targets = [spec.output.image] if spec.output.push else []
    if spec.cache.type == "registry" and spec.cache.ref:
        targets.append(split_tagged(spec.cache.ref)[0])
    return tuple(dict.fromkeys(targets))


# -- following a running build --

def _done(record: dict) -> bool:
    return record["phase"] in (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Seen:
    """A unit's state as kiln sees it, with what seeing it needs: a question answered, or a look later."""
    state: UnitState
    ask: Question | None = None
    look_again: float | None = None


def _follow(facts: Facts, spec: BuildSpec, old: dict, view: statuses.BuildStatus) -> Decision:
    """A build with units in status: see each unfinished unit, then fail, retry, conclude or keep waiting."""
    if facts.refused:  # a retry's Job (or its Secret) the API server will not take: waiting will not change that
        what, message = facts.refused
        records = [dict(r) for r in old["units"]]
        refused = next((r for r in records if f"Job {r['job']}" == what), records[0])
        return _fail(facts, spec, records, {**refused, "reason": reasons.CREATE_REJECTED,
                                            "message": f"the API server refused to create {what}: {message}"},
                     len(records) > 1, view)
    jobs = {job["metadata"]["name"]: job for job in facts.jobs}
    records: list[dict] = []
    retries: set[int] = set()  # indexes of the records to run again
    looks: list[float] = []
    for record in old["units"]:
        if _done(record):  # recorded once seen: a Job deleted since loses nothing
            records.append(dict(record))
            continue
        record, seen = _see(facts, spec, record, jobs.get(record["job"]))
        if seen.ask is not None:
            return Decision(ask=seen.ask)
        seen = _refused_with_old_credentials(facts, record, seen)
        if seen.look_again is not None:
            looks.append(seen.look_again)
        record = {**record, **_recorded(seen.state, record, facts.secret_values)}
        if seen.state.phase == FAILED and seen.state.retryable and _retries_used(record) < spec.retries:
            retries.add(len(records))
        records.append(record)
    several = len(records) > 1
    failed = next((r for i, r in enumerate(records) if r["phase"] == FAILED and i not in retries), None)
    if failed:
        decision = _fail(facts, spec, records, failed, several, view)
    elif retries:
        decision = _retry(facts, spec, records, retries, several, view)
    elif all(r["phase"] == SUCCEEDED for r in records):
        decision = _conclude(facts, spec, records, view)
    else:
        decision = _waiting_units(facts, records, several, view)
    for seconds in looks:
        decision = decision.sooner(seconds)
    return decision


def _see(facts: Facts, spec: BuildSpec, record: dict, job: dict | None) -> tuple[dict, Seen]:
    """One unfinished unit: its Job and pod read, with the patience each state calls for; the record as the
    pull patience left it."""
    state = observe_unit(job, facts.pods.get(record["job"])) if job else \
        UnitState(FAILED, reasons.JOB_LOST, "its Job was deleted before the build finished", retryable=True)
    if spec.attestations.sbom:
        state = sbom_generator_failure(state, spec.attestations.sbom_generator or facts.settings.sbom_generator)
    state, record = _image_pull_patience(state, facts, record)
    looks: list[float] = []
    no_pod = job is not None and record["job"] not in facts.pods
    if no_pod and state.phase == PENDING:
        seen = _why_no_pod(facts, job, state)
        if seen.ask is not None:
            return record, seen
        state, looks = seen.state, [*looks, seen.look_again]
    if no_pod and state.phase in (SUCCEEDED, FAILED):
        seen = _pod_on_its_way(facts, state)
        state, looks = seen.state, [*looks, seen.look_again]
    if state.phase == SUCCEEDED:
        seen = _with_digest(facts, spec, record, state)
        if seen.ask is not None:
            return record, seen
        state = seen.state
    if state.phase in (SUCCEEDED, FAILED):
        seen = _log_kept(facts, record, state)
        if seen.ask is not None:
            return record, seen
        state = seen.state
    looks = [seconds for seconds in looks if seconds is not None]
    return record, Seen(state, look_again=min(looks) if looks else None)


def _refused_with_old_credentials(facts: Facts, record: dict, seen: Seen) -> Seen:
    """A registry that refused a unit whose credentials were replaced since it started (a password rotated, the
    old one revoked) may take the new ones: the refusal is retried with them."""
    state = seen.state
    if state.phase != FAILED or state.reason not in (reasons.PUSH_DENIED, reasons.BASE_IMAGE_PULL_DENIED) \
            or record.get("loginsRevision") in (None, facts.logins_revision):
        return seen
    return dataclasses.replace(seen, state=dataclasses.replace(
        state, retryable=True, message=f"{state.message}, with credentials replaced since it started"))


def _waiting_units(facts: Facts, records: list[dict], several: bool, view: statuses.BuildStatus) -> Decision:
    """Units still pending or running: say what the build waits for."""
    running = any(r["phase"] in (RUNNING, SUCCEEDED) for r in records)
    waiting = next((r for r in records if r["phase"] == PENDING), records[0])
    why = f"{_named(waiting, several)}{waiting.get('message') or 'waiting'}"
    # While a unit builds, another may wait for a node that never comes, or run on a node gone silent: said.
    stuck = [f"{_named(r, several)}{r['message']}" for r in records
             if (r["phase"] == PENDING and r.get("message", "").startswith(WAITING_FOR_NODE))
             or (r["phase"] == RUNNING and r.get("message") == NODE_NOT_READY)]
    message = ("; ".join(["building", *stuck])) if running else why
    reason = reasons.BUILDING if running else waiting.get("reason") or reasons.BUILD_PENDING
    decision = Decision(status=_progress(view, BUILDING if running else BUILD_PENDING, reason, message, records))
    pulls = [_parse(r["pullFailingSince"]) for r in records if r.get("pullFailingSince")]
    if pulls:  # nothing else may happen when the patience runs out
        grace = datetime.timedelta(seconds=facts.settings.image_pull_grace)
        decision = decision.sooner(max((min(pulls) + grace - facts.now).total_seconds(), 1.0))
    return decision


def _progress(view: statuses.BuildStatus, phase: str, reason: str, message: str, records: list[dict]) -> dict:
    status = view.make(phase, reason, message, attempt=max(r["attempt"] for r in records),
                       job_names=[r["job"] for r in records])
    starts = [r["startTime"] for r in records if r.get("startTime")]
    if starts:
        status["startTime"] = min(starts)
    status["units"] = records
    return status


def _started(view: statuses.BuildStatus, records: list[dict]) -> statuses.BuildStatus:
    """The view with the build's start (its earliest unit's) and its units as they are now."""
    starts = [r["startTime"] for r in records if r.get("startTime")]
    start = min(starts) if starts else view.carried.get("startTime")
    return dataclasses.replace(view, carried={**view.carried, "startTime": start, "units": records})


def _image_pull_patience(state: UnitState, facts: Facts, record: dict) -> tuple[UnitState, dict]:
    """The kubelet keeps retrying a pull by itself: kiln reports it, recreates nothing, and gives up after a while."""
    if state.reason != reasons.BUILDER_IMAGE_PULL_FAILED or state.phase != FAILED or not state.retryable:
        return state, {k: v for k, v in record.items() if k != "pullFailingSince"}
    since = record.get("pullFailingSince") or labels.iso(facts.now)
    record = {**record, "pullFailingSince": since}
    if (facts.now - _parse(since)).total_seconds() < facts.settings.image_pull_grace:
        return dataclasses.replace(state, phase=PENDING, retryable=False), record
    return dataclasses.replace(state, retryable=False, message=f"{state.message}; still failing after "
                                                               f"{facts.settings.image_pull_grace:g}s"), record


def _why_no_pod(facts: Facts, job: dict, state: UnitState) -> Seen:
    """A Job that makes no pod: Pod Security admission refusing it fails the build at once (it will not pass
    by waiting); anything else the Job controller reports (a quota, say) is shown while kiln waits."""
    created = job["metadata"].get("creationTimestamp")
    if not created or (facts.now - _parse(created)).total_seconds() < POD_PATIENCE:
        return Seen(state, look_again=POD_PATIENCE)
    question = JobEvents(job["metadata"]["name"])
    if question not in facts.answers:
        return Seen(state, ask=question)
    refusals = [message for reason, message in facts.answers[question] if reason == "FailedCreate"]
    if any("violates PodSecurity" in message for message in refusals):
        state = UnitState(FAILED, reasons.POD_SECURITY_REJECTED, "the namespace's Pod Security admission refuses the "
                          f"build pod ({refusals[-1][-300:]}); rootless BuildKit needs the privileged level, see the README")
    elif refusals:
        state = dataclasses.replace(state, reason=reasons.POD_CREATE_FAILED,
                                    message=f"the Job cannot create its pod: {refusals[-1][-300:]}")
    return Seen(state, look_again=POD_PATIENCE)


def _pod_on_its_way(facts: Facts, state: UnitState) -> Seen:
    """A Job concluded, and kiln has seen no pod of it: Jobs and Pods come on separate watch streams, and a busy
    operator may get a fast build's Job before its pod. The pod's final state (digest, exit code, log) is on its
    way: kiln waits for it a while, and only then concludes from the Job alone (the pod was deleted, or collected).
    Its twin for a pod kiln last saw before its end is outcomes._ending, which needs no bound: that pod's end comes."""
    ended = state.completion_time
    waited = (facts.now - _parse(ended)).total_seconds() if ended else POD_PATIENCE
    if waited >= POD_PATIENCE:
        return Seen(state)
    return Seen(UnitState(RUNNING, reasons.BUILDING, "building"), look_again=POD_PATIENCE - waited)


def _with_digest(facts: Facts, spec: BuildSpec, record: dict, state: UnitState) -> Seen:
    """A unit's digest, from its termination message, else (one pod that pushed tags) from the registry."""
    if not state.digest and spec.output.push:
        if unit_of(record).by_digest:  # nothing else names what it pushed
            return Seen(dataclasses.replace(state, phase=FAILED, reason=reasons.DIGEST_NOT_REPORTED, retryable=True,
                                            message="the image was pushed by digest, but its digest did not reach kiln"))
        question = TagDigest(spec.output.image, spec.output.tags[0])
        answer = facts.answers.get(question)
        if answer is None:
            return Seen(state, ask=question)
        if isinstance(answer, RegistryProblem):
            return Seen(dataclasses.replace(state, phase=FAILED, reason=reasons.DIGEST_NOT_REPORTED,
                                            retryable=answer.transient,
                                            message=f"the build reported no digest, and {answer.message}"))
        state = dataclasses.replace(state, digest=answer[0], media_type=answer[1])
    return Seen(state)


def _log_kept(facts: Facts, record: dict, state: UnitState) -> Seen:
    """A unit that ended keeps its pod's log (a ConfigMap its Job owns), and says what it took from a cache."""
    pod = facts.pods.get(record["job"])
    if not ran(pod):
        return Seen(state)
    question = BuildLog(record["job"], pod["metadata"]["name"])
    kept = facts.answers.get(question)
    if kept is None:
        return Seen(state, ask=question)
    return Seen(dataclasses.replace(state, cached_steps=kept.cached_steps, total_steps=kept.total_steps,
                                    log=kept.config_map))


def _recorded(state: UnitState, record: dict, secret_values: frozenset[str]) -> dict:
    """What status keeps of a unit's state; a RUN step's output never shows a value of the build's Secrets."""
    found = {"phase": state.phase, "reason": state.reason, "message": redacted(state.message, secret_values),
             "digest": state.digest, "mediaType": state.media_type,
             "logExcerpt": redacted(state.log_excerpt, secret_values), "startTime": record.get("startTime"),
             "completionTime": state.completion_time, "cachedSteps": state.cached_steps,
             "totalSteps": state.total_steps, "log": state.log}
    return {k: v for k, v in found.items() if v not in (None, "")}


def _retries_used(record: dict) -> int:
    """Retries a unit has had. Its attempt numbers its Jobs, and goes on after a suspend and resume, which is
    no retry (a unit recorded before kiln counted retries apart: its attempt)."""
    return record.get("retries", record["attempt"])


_RESULT_FIELDS = ("reason", "message", "digest", "mediaType", "logExcerpt", "completionTime", "pullFailingSince",
                  "cachedSteps", "totalSteps", "log")


def _retry(facts: Facts, spec: BuildSpec, records: list[dict], retries: set[int], several: bool,
           view: statuses.BuildStatus) -> Decision:
    """Transient failures run again as a new attempt, with the build's credentials made again."""
    if isinstance(facts.logins, CredentialsProblem):
        # The units to retry stay unfinished in status: seen again, their Jobs' failure asks for the retry again.
        message = f"a retry waits: {facts.logins.message}"
        waiting = [{**r, "phase": PENDING, "reason": facts.logins.reason, "message": message} if i in retries else r
                   for i, r in enumerate(records)]
        blocked = _block(facts, spec, view, Blocked(facts.logins.reason, message, credentials=True))
        return dataclasses.replace(blocked, status={**blocked.status, "units": waiting, "phase": BUILDING})
    running = {j["metadata"]["name"] for j in facts.jobs if active(j)}
    again, deletes, events, jobs = [], [], [], []
    for i, record in enumerate(records):
        if i not in retries:
            again.append(record)
            continue
        unit, attempt, reason = unit_of(record), record["attempt"] + 1, record["reason"]
        used = _retries_used(record) + 1
        if record["job"] in running:
            deletes.append(record["job"])
        events.append(("Warning", "BuildRetried", f"{_named(record, several)}{reason}: {record['message']}; "
                                                  f"attempt {used + 1} of {spec.retries + 1}"))
        kept = {k: v for k, v in record.items() if k not in _RESULT_FIELDS}
        again.append({**kept, "attempt": attempt, "retries": used, "phase": PENDING,
                      "job": job_name(spec, unit, attempt), "reason": reasons.BUILD_PENDING, "message": WAITING_FOR_POD,
                      "loginsRevision": facts.logins_revision})
        jobs.append((unit, attempt))
    return Decision(status=_progress(view, BUILDING, reasons.BUILDING, f"retrying after {reason}", again),
                    credentials=True, jobs=tuple(jobs), delete_jobs=tuple(deletes), events=tuple(events))


def _fail(facts: Facts, spec: BuildSpec, records: list[dict], failed: dict, several: bool,
          view: statuses.BuildStatus) -> Decision:
    """One unit failed for good: the others stop (no index can be made) and the build fails, naming it."""
    reason = failed.get("reason") or reasons.BUILD_FAILED
    message = f"{_named(failed, several)}{failed.get('message') or 'the build failed'}"
    completion = failed.get("completionTime") or labels.iso(facts.now)
    status = _started(view, records).failed(reason, message, failed.get("logExcerpt", ""),
                                            [r["job"] for r in records], max(r["attempt"] for r in records),
                                            completion, labels.iso(facts.now))
    return Decision(status={**status, "units": records}, delete_jobs=_running_jobs(facts, spec.build_id),
                    events=(("Warning", "BuildFailed", f"{reason}: {message}"),))


def _to_ask_before_concluding(spec: BuildSpec, records: list[dict]) -> tuple[Question | None, list[dict]]:
    """The registry question concluding needs (assemble the index of several units' images, or look inside the
    index one pod pushed), or none and the platforms known without one, as status lists them."""
    digest = records[0].get("digest")
    if any(unit_of(r).by_digest for r in records):  # a unit of several platforms (auto's emulated) gives each
        return AssembleIndex(spec.output.image, tuple((p, r["digest"], r.get("mediaType") or "")
                                                      for r in records for p in r["platforms"]), spec.output.tags), []
    if spec.output.push and digest and records[0].get("mediaType") not in MANIFEST_MEDIA_TYPES:
        return ImageContents(spec.output.image, digest, tuple(records[0]["platforms"])), []
    if spec.output.push and digest and len(records[0]["platforms"]) == 1:  # one manifest: its platform is the unit's
        return None, [_platform_status(PlatformImage(records[0]["platforms"][0], digest), records[0]["builtBy"])]
    return None, []


def _platform_status(image: PlatformImage, built_by: str) -> dict:
    out = {"platform": image.platform, "digest": image.digest, "builtBy": built_by}
    if image.attestation:
        out["attestation"] = {"digest": image.attestation.digest,
                              "predicateTypes": list(image.attestation.predicate_types)}
    return out


def _answered_platforms(question: Question, answer, records: list[dict]) -> tuple[str | None, list[dict]]:
    """The pushed digest and the platforms, from the registry's answer to the question concluding asked."""
    built_by = {p: r["builtBy"] for r in records for p in r["platforms"]}
    if isinstance(question, AssembleIndex):
        digest, images = answer
        return digest, [_platform_status(image, built_by[image.platform]) for image in images]
    if isinstance(answer, RegistryProblem):  # a failed look inside is no failure: BuildKit pushed it
        return records[0].get("digest"), []
    return records[0].get("digest"), [_platform_status(image, records[0]["builtBy"]) for image in answer]


def _conclude(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus) -> Decision:
    """Every unit pushed: the image (one pod), or the index kiln assembles from several; then its signature."""
    question, platforms = _to_ask_before_concluding(spec, records)
    digest = records[0].get("digest")
    if question is not None:
        if (wait := _waiting(facts, spec, view.carried)) is not None:  # the registry failed a moment ago
            return _keep_until(view, wait)
        answer = facts.answers.get(question)
        if answer is None:
            return Decision(ask=question)
        if isinstance(answer, RegistryProblem) and isinstance(question, AssembleIndex):
            return _not_concluded(facts, spec, records, view, answer, "assembling the index")
        digest, platforms = _answered_platforms(question, answer, records)
    if not (spec.signing.key_secret and digest):
        return _succeed(facts, spec, records, view, digest, platforms)
    sign = SignImage(spec.output.image, digest, spec.signing.key_secret)
    if (signature := facts.answers.get(sign)) is None:
        if (wait := _waiting(facts, spec, view.carried)) is not None:
            return _keep_until(view, wait)
        return Decision(ask=sign)
    if isinstance(signature, RegistryProblem):
        if signature.transient:
            return _not_concluded(facts, spec, records, view, signature, "signing")
        return _unsigned(facts, spec, records, view, digest, platforms, signature)
    return _succeed(facts, spec, records, view, digest, platforms, signature)


def _not_concluded(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus,
                   problem: RegistryProblem, doing: str) -> Decision:
    """The images are pushed and concluding failed: a transient failure is tried again later, another fails."""
    if not problem.transient:
        return _fail(facts, spec, records, {**records[0], "reason": problem.reason,
                                            "message": f"{doing}: {problem.message}"}, False, view)
    blocked = _block(facts, spec, view, Blocked(problem.reason, f"the images are built; {doing}: {problem.message}"))
    return dataclasses.replace(blocked, status={**blocked.status, "phase": BUILDING, "units": records})


def _succeed(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus,
             digest: str | None, platforms: list[dict], signature: Signature | None = None) -> Decision:
    status = _pushed(facts, records, view, digest, platforms)
    if signature:
        status["signature"] = {"reference": signature.reference, "keyFingerprint": signature.key_fingerprint}
    return Decision(status=status, events=(("Normal", "BuildSucceeded",
                                            f"pushed {status.get('image') or spec.output.image}"),))


def _unsigned(facts: Facts, spec: BuildSpec, records: list[dict], view: statuses.BuildStatus, digest: str,
              platforms: list[dict], problem: RegistryProblem) -> Decision:
    """Pushed but not signed: the build failed, and its status still says what was pushed."""
    message = f"pushed {spec.output.image}@{digest}, but signing it failed: {problem.message}"
    status = statuses.unsigned(_pushed(facts, records, view, digest, platforms), spec, reasons.SIGNING_FAILED,
                               message, labels.iso(facts.now))
    return Decision(status=status, events=(("Warning", "BuildFailed", f"{reasons.SIGNING_FAILED}: {message}"),))


def _pushed(facts: Facts, records: list[dict], view: statuses.BuildStatus, digest: str | None,
            platforms: list[dict]) -> dict:
    completion = max((r["completionTime"] for r in records if r.get("completionTime")), default=labels.iso(facts.now))
    status = _started(view, records).succeeded(
        [r["job"] for r in records], max(r["attempt"] for r in records), completion, digest, platforms,
        sum(r.get("cachedSteps", 0) for r in records), sum(r.get("totalSteps", 0) for r in records), labels.iso(facts.now))
    status = {**status, "units": records}
    status.pop("retry", None)
    return status


# -- rules that hold whatever was decided --

def _orphans_rule(facts: Facts, spec: BuildSpec, decision: Decision) -> Decision:
    """A Job of the current build that its plan in status does not name goes: made before a crash that kept the
    status from being written, for a plan that has changed since (auto's, when nodes came or went)."""
    named = {unit["job"] for unit in decision.status.get("units") or []} \
        if decision.status.get("buildID") == spec.build_id else set()
    orphans = tuple(name for name in _running_jobs(facts, spec.build_id)
                    if name not in named and name not in decision.delete_jobs)
    return dataclasses.replace(decision, delete_jobs=decision.delete_jobs + orphans) if orphans else decision


def _credentials_rule(facts: Facts, spec: BuildSpec, decision: Decision) -> Decision:
    """A build's Secret exists exactly while one of its Jobs may still run."""
    deleted = set(decision.delete_jobs)
    running = {_build_of(j) for j in facts.jobs if active(j) and j["metadata"]["name"] not in deleted}
    units = decision.status.get("units") or []
    # A unit recorded as created and not finished may run even if the watch has not shown its Job yet.
    if decision.jobs or (decision.status.get("buildID") == spec.build_id and any(not _done(u) for u in units)
                         and decision.status.get("phase") in (BUILD_PENDING, BUILDING)):
        running.add(spec.build_id)
    return dataclasses.replace(
        decision, delete_credentials=tuple(sorted(set(decision.delete_credentials) | (facts.credentials - running))),
        credentials=decision.credentials and spec.build_id in running)


def _trim_history(facts: Facts, spec: BuildSpec, decision: Decision) -> Decision:
    """Jobs of builds that fell out of the history (and are not the current one) are deleted, and their kept
    logs: a pod's go with its Job, a warm build's are the ImageBuild's until then."""
    keep = {spec.build_id} | {item.get("buildID") for item in decision.status.get("history") or []}
    gone = tuple(j["metadata"]["name"] for j in facts.jobs
                 if _build_of(j) not in keep and j["metadata"]["name"] not in decision.delete_jobs)
    old = (facts.obj.get("status") or {}).get("history") or [] if "history" in decision.status else []
    left = tuple(item["buildID"] for item in old if item.get("buildID") and item["buildID"] not in keep)
    return dataclasses.replace(decision, delete_jobs=decision.delete_jobs + gone, delete_logs=decision.delete_logs + left)
