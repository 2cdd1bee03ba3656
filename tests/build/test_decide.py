"""decide, the pure heart of the build lifecycle, as tables of (phase x event order) -> actions and status.

ORDERS below is the specification to read first: each row an order of events (the operator deciding, a pod
running or ending, a user editing, suspending or rebuilding, a login or the namespace's line changing) and
where the build then is. The tests after it pin what each kind of order does in detail.

A small World holds what the cluster would: the ImageBuild and its status, Jobs, Pods and
credentials. Each row is a sequence of events (a Job completes, a Job is deleted by hand, a login
flips, the spec changes, the operator crashes half-way through a decision) followed by what decide
must then do. The operator carries out decisions the same way (controller/builds.py, carry_out); the
operator tier runs the same stories through kopf and the emulator.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from dataclasses import dataclass, field

import pytest

from kiln.build.children import children
from kiln.build.credentials import Credentials, CredentialsProblem, ResolvedLogin
from kiln.build.decide import START_POLICIES, Decision, Facts, decide, settled, start_verdict
from kiln.build.questions import (
    AssembleIndex,
    Attestation,
    BuildLog,
    ImageContents,
    JobEvents,
    KeptLog,
    PlatformImage,
    PushCheck,
    RegistryProblem,
    Signature,
    SignImage,
    TagDigest,
)
from kiln.spec import reasons
from kiln.spec.parse import InvalidSpec, parse_image_build
from kiln.spec.schema import pruned, schema_of
from kiln.spec.settings import Settings

T0 = datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=datetime.UTC)
STATUS_SCHEMA = schema_of("ImageBuild")["properties"]["status"]  # what the API server keeps of a status
LOGINS = [ResolvedLogin("reg", "r.example", Credentials("alice", "alice-pw"))]
PLATFORMS = ["linux/amd64", "linux/arm64"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64 if n < 16 else "sha256:" + f"{n:064x}"


def metadata(value: str, media_type: str = OCI_MANIFEST) -> str:
    return json.dumps({"containerimage.descriptor": {"mediaType": media_type, "digest": value},
                       "containerimage.digest": value}, indent=2)


@dataclass
class World:
    """What the API server and the registry hold, changed by decisions and by the events of a row."""
    obj: dict
    jobs: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    credentials: set[str] = field(default_factory=set)
    logins: list | CredentialsProblem = field(default_factory=lambda: list(LOGINS))
    logins_revision: str = "1"
    answers: dict = field(default_factory=dict)  # what the registry answers, by question
    now: datetime.datetime = T0
    ready_archs: frozenset = frozenset()
    volume_holder: str | None = None
    namespace_load: tuple[int, int] = (0, 0)
    mounts: CredentialsProblem | None = None
    mounts_revision: str = ""
    secret_values: frozenset = frozenset()
    settings: Settings = field(default_factory=lambda: Settings(image_pull_grace=60))
    created: list[str] = field(default_factory=list)  # every Job ever created, in order
    creating: list[dict] = field(default_factory=list)  # what the last decision created, rendered
    events: list[str] = field(default_factory=list)

    def facts(self, refused=None) -> Facts:
        try:
            spec, problem = parse_image_build(self.obj), None
        except InvalidSpec as exc:
            spec, problem = None, str(exc)
        return Facts(obj=copy.deepcopy(self.obj), spec=spec, problem=problem, jobs=tuple(self.jobs.values()),
                     pods=dict(self.pods), credentials=frozenset(self.credentials), logins=self.logins,
                     logins_revision=self.logins_revision, settings=self.settings, now=self.now,
                     ready_archs=self.ready_archs, volume_holder=self.volume_holder, answers=dict(self.answers),
                     namespace_load=self.namespace_load, mounts=self.mounts, mounts_revision=self.mounts_revision,
                     secret_values=self.secret_values,
                     refused=refused)

    def decide(self, crash_after: int | None = None, refuse: str | None = None) -> Decision:
        """decide, answering its questions from self.answers, and carry the decision out as the operator does.

        crash_after: the operator dies after this many creates, or after all of them when there are no more
            (the status is not written either).
        refuse: the API server refuses to create the object of this name.
        """
        facts = self.facts()
        decision = decide(facts)
        while decision.ask is not None:
            assert decision.ask in self.answers, f"unanswered question {decision.ask}"
            facts.answers[decision.ask] = self.answers[decision.ask]
            decision = decide(facts)
        for name in decision.delete_jobs:
            self.jobs.pop(name, None)
            self.pods.pop(name, None)
        self.credentials -= set(decision.delete_credentials)
        self.creating = children(facts, decision)
        for i, child in enumerate(self.creating):
            if crash_after is not None and i >= crash_after:
                return decision
            name = child["metadata"]["name"]
            if name == refuse:
                again = decide(dataclasses.replace(facts, refused=(f"{child['kind']} {name}",
                                                                    "admission webhook denied the request")))
                for job in again.delete_jobs:
                    self.jobs.pop(job, None)
                self.credentials -= set(again.delete_credentials)
                self.obj["status"] = again.status
                self.creating = children(facts, again)
                return again
            if child["kind"] == "Job" and name not in self.jobs:
                self.jobs[name] = {**copy.deepcopy(child), "status": {}}
                self.jobs[name]["metadata"]["creationTimestamp"] = _iso(self.now)
                self.created.append(name)
            elif child["kind"] == "Secret":
                self.credentials.add(child["metadata"]["labels"]["kiln.dev/build-id"])
        if crash_after is not None:  # after the last create, before the status write
            return decision
        stored = json.loads(json.dumps(decision.status))
        assert pruned(STATUS_SCHEMA, stored, top=False) == stored, "a status field the CRD would prune"
        self.obj["status"] = decision.status
        self.events += [reason for _, reason, _ in decision.events]
        return decision

    # -- what the Job controller and the kubelet do --

    def job(self, unit: str) -> str:
        (name,) = [n for n, j in self.jobs.items() if j["metadata"]["labels"]["kiln.dev/unit"] == unit
                   and not _finished(j)] or [max(n for n, j in self.jobs.items()
                                                 if j["metadata"]["labels"]["kiln.dev/unit"] == unit)]
        return name

    def run(self, name: str) -> None:
        self.jobs[name]["status"] = {"startTime": _iso(self.now), "active": 1}
        self.pods[name] = {"metadata": {"name": f"{name}-pod"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "buildkit", "state": {"running": {"startedAt": _iso(self.now)}}}]}}

    def finish(self, name: str, message: str = "", exit_code: int = 0, job_reason: str | None = None,
               pod_status: dict | None = None) -> None:
        kind = "Complete" if exit_code == 0 else "Failed"
        self.jobs[name]["status"] = {"startTime": _iso(self.now), "completionTime": _iso(self.now),
                                     "conditions": [{"type": kind, "status": "True", "reason": job_reason,
                                                     "lastTransitionTime": _iso(self.now)}]}
        self.pods[name] = {"metadata": {"name": f"{name}-pod"}, "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed", **(pod_status or {}),
            "containerStatuses": [{"name": "buildkit", "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}
        self.answers.setdefault(BuildLog(name, f"{name}-pod"), KeptLog(1, 2, f"{name}-log"))

    def pull_fails(self, name: str) -> None:
        self.pods[name] = {"metadata": {"name": f"{name}-pod"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "buildkit", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}

    def edit(self, **spec) -> None:
        self.obj["spec"].update(spec)
        self.obj["metadata"]["generation"] += 1

    @property
    def status(self) -> dict:
        return self.obj.get("status") or {}

    def condition(self, kind: str) -> dict:
        return next((c for c in self.status.get("conditions", []) if c["type"] == kind), {})


def _finished(job: dict) -> bool:
    return any(c.get("status") == "True" for c in (job.get("status") or {}).get("conditions", []))


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def world(**spec) -> World:
    base = {"source": {"git": {"url": "https://git.example/app.git", "revision": "main"}},
            "output": {"image": "r.example/team/app", "tags": ["v1"]}, "registryLogins": ["reg"], **spec}
    obj = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
           "metadata": {"name": "app", "namespace": "default", "uid": "uid-1", "generation": 1}, "spec": base}
    w = World(obj)
    targets = ["r.example/team/app"] if spec.get("cache", {}).get("type") in ("none", "local", "inline") \
        else ["r.example/team/app"]
    w.answers[PushCheck(tuple(targets))] = None
    return w


def native() -> World:
    w = world(platforms=PLATFORMS, multiArch={"strategy": "native"})
    return w


def index_question(amd64: str, arm64: str) -> AssembleIndex:
    """What a native two-platform build asks the registry once both pods pushed."""
    return AssembleIndex("r.example/team/app", (("linux/amd64", amd64, OCI_MANIFEST), ("linux/arm64", arm64, OCI_MANIFEST)),
                         ("v1",))


def index_answer(w: World, amd64: str, arm64: str, result: str = digest(9)) -> None:
    w.answers[index_question(amd64, arm64)] = (result, [PlatformImage("linux/amd64", amd64), PlatformImage("linux/arm64", arm64)])


# -- the orders, as a table: a build's life, event by event, and where it ends --

TRANSIENT = "error: failed to push r.example/team/app:v1: unexpected status: 503 Service Unavailable"
RUN_FAILED = 'process "/bin/sh -c false" did not complete successfully: exit code: 1'


def play(w: World, step: str) -> None:
    """One event of a row: what the operator, the Job controller, the kubelet, a user or a registry did."""
    unit = "all"
    steps = {
        "decide": lambda: w.decide(),
        "crash": lambda: w.decide(crash_after=99),  # dies after its creates, before the status write
        "run": lambda: w.run(w.job(unit)),
        "push": lambda: w.finish(w.job(unit), metadata(digest(len(w.created)))),
        "503": lambda: w.finish(w.job(unit), TRANSIENT, exit_code=1),
        "RUN fails": lambda: w.finish(w.job(unit), RUN_FAILED, exit_code=1),
        "pod deleted": lambda: w.finish(w.job(unit), "#7 CANCELED", exit_code=143),
        "Job deleted": lambda: _delete_job(w, w.job(unit)),
        "suspend": lambda: w.edit(suspend=True),
        "resume": lambda: w.edit(suspend=False),
        "edit": lambda: w.edit(source={"git": {"url": "https://git.example/app.git", "revision": "next"}}),
        "rebuild": lambda: w.obj["metadata"].setdefault("annotations", {}).update({"kiln.dev/rebuild": "1"}),
        "rebuild reverted": lambda: w.obj["metadata"].pop("annotations"),
        "login down": lambda: setattr(w, "logins", CredentialsProblem(
            reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (AuthenticationFailed: no)")),
        "login back": lambda: (setattr(w, "logins", list(LOGINS)), setattr(w, "logins_revision", "2")) and None,
        "queue full": lambda: (setattr(w, "settings", Settings(image_pull_grace=60, max_builds_per_namespace=1)),
                               setattr(w, "namespace_load", (1, 0))) and None,
        "queue free": lambda: setattr(w, "namespace_load", (0, 0)),
        "a minute": lambda: setattr(w, "now", w.now + datetime.timedelta(minutes=1)),
        "half an hour": lambda: setattr(w, "now", w.now + datetime.timedelta(minutes=31)),
        "spec made invalid": lambda: w.edit(source={"git": {"url": "https://git.example/app.git"}, "url": "https://e/c"}),
    }
    steps[step]()


def _delete_job(w: World, name: str) -> None:
    """By hand, with its pod (kubectl delete job: the garbage collector takes the pod)."""
    w.jobs.pop(name)
    w.pods.pop(name, None)


ORDERS = [
    # (the order, its events, then: phase, Ready's reason, Jobs ever created)
    ("a pod pushes", "decide, run, decide, push, decide", "Succeeded", "Succeeded", 1),
    ("a RUN step fails: never retried", "decide, run, RUN fails, decide", "Failed", "DockerfileError", 1),
    ("a registry answers 503, then the retry pushes", "decide, 503, decide, push, decide", "Succeeded", "Succeeded", 2),
    ("a registry answers 503 twice: one retry only", "decide, 503, decide, 503, decide", "Failed",
     "RegistryTransientError", 2),
    ("its pod deleted mid-build, then the retry pushes", "decide, run, pod deleted, decide, push, decide", "Succeeded",
     "Succeeded", 2),
    ("its Job deleted mid-build, then the retry pushes", "decide, run, Job deleted, decide, push, decide", "Succeeded",
     "Succeeded", 2),
    ("suspended mid-build", "decide, run, suspend, decide", "Cancelled", "Suspended", 1),
    ("suspended, resumed: a new attempt with its retries whole", "decide, run, suspend, decide, resume, decide, 503, "
     "decide, push, decide", "Succeeded", "Succeeded", 3),
    ("resumed while the namespace is full: waits, then starts", "decide, run, suspend, decide, queue full, resume, "
     "decide, a minute, decide, queue free, decide, push, decide", "Succeeded", "Succeeded", 2),
    ("edited mid-build: the new spec supersedes it", "decide, run, edit, decide, push, decide", "Succeeded",
     "Succeeded", 2),
    ("rebuilt, then the token reverted: built a third time", "decide, push, decide, rebuild, decide, push, decide, "
     "rebuild reverted, decide, push, decide", "Succeeded", "Succeeded", 3),
    ("a login down at the start: waits, then starts", "login down, decide, a minute, login back, decide, push, decide",
     "Succeeded", "Succeeded", 1),
    ("a login down when a retry is due: waits, then retries", "decide, 503, login down, decide, a minute, decide, "
     "login back, decide, push, decide", "Succeeded", "Succeeded", 2),
    ("the operator dies after its creates, before the status write", "crash, decide, push, decide", "Succeeded",
     "Succeeded", 1),
    ("queued longer than spec.timeout", "queue full, decide, half an hour, decide", "Failed", "TimedOut", 0),
    ("its spec made invalid mid-build", "decide, run, spec made invalid, decide", "Failed", "InvalidSpec", 1),
]


@pytest.mark.parametrize(("events", "phase", "reason", "created"), [pytest.param(e, p, r, c, id=o)
                                                                    for o, e, p, r, c in ORDERS])
def test_each_order_of_events_ends_where_the_table_says(events, phase, reason, created):
    w = world()
    for step in events.split(", "):
        play(w, step)
    assert (w.status["phase"], w.condition("Ready")["reason"], len(w.created)) == (phase, reason, created)
    running = [name for name, job in w.jobs.items() if not _finished(job) and name in w.pods
               and w.pods[name]["status"].get("phase") == "Running"]
    assert running == [] or phase in ("Pending", "Building")  # nothing left running once the build has ended


# -- starting --

def test_a_new_build_creates_credentials_then_one_job_per_unit_and_records_the_plan():
    w = native()
    w.decide()
    assert [o["kind"] for o in w.creating] == ["Secret", "Job", "Job"]
    assert [u["key"] for u in w.status["units"]] == ["amd64", "arm64"] and w.status["phase"] == "Pending"
    assert w.events == ["BuildStarted"] and len(w.jobs) == 2 and w.credentials == {w.status["buildID"]}


def test_a_build_that_mounts_a_secret_which_has_not_opted_in_stalls_and_creates_nothing():
    w = world(secrets=[{"id": "npm", "secretRef": {"name": "npm-token", "key": ".npmrc"}}])
    w.mounts = CredentialsProblem(reasons.SECRET_NOT_OPTED_IN, "Secret 'npm-token' has not opted in to ImageBuilds")
    w.decide()
    assert w.creating == [] and w.jobs == {} and w.credentials == set()
    assert w.condition("Stalled")["status"] == "True" and w.condition("Stalled")["reason"] == reasons.SECRET_NOT_OPTED_IN
    assert w.condition("CredentialsReady")["status"] == "False"
    w.mounts, w.mounts_revision = None, "2"  # labelled by its owner: a new resourceVersion ends the backoff
    w.decide()
    assert [o["kind"] for o in w.creating] == ["Secret", "Job"]


def test_a_failed_run_steps_output_in_status_never_shows_a_value_of_the_builds_secrets():
    token = "npm_Rk3yT0ken-value-42"
    w = world(retries=0)
    w.secret_values = frozenset({token, "-----BEGIN KEY-----\nMIIEkey-line-two\n-----END KEY-----"})
    w.decide()
    # The kubelet keeps the tail of the output: here it begins in the middle of the token.
    w.finish(w.job("all"), f"Rk3yT0ken-value-42\n#7 RUN cat /run/secrets/npm\n{token}\nMIIEkey-line-two\n"
                           "ERROR: process did not complete successfully: exit code: 1", exit_code=1)
    w.decide()
    shown = json.dumps(w.status)
    assert w.status["phase"] == "Failed" and "exit code: 1" in w.status["failure"]["logExcerpt"]
    assert "Rk3y" not in shown and "T0ken" not in shown and "MIIEkey" not in shown
    assert w.status["failure"]["logExcerpt"].startswith("[redacted]\n#7 RUN cat /run/secrets/npm\n[redacted]")


def test_an_operator_crash_between_two_job_creates_is_completed_on_the_next_decision():
    w = native()
    w.decide(crash_after=2)  # the Secret and the amd64 Job exist; no status was written
    assert len(w.jobs) == 1 and "units" not in w.status
    w.decide()
    assert sorted(j["metadata"]["labels"]["kiln.dev/unit"] for j in w.jobs.values()) == ["amd64", "arm64"]
    assert len(w.created) == 2  # nothing twice


@pytest.mark.parametrize(("problem", "stalled"), [
    (CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (AuthenticationFailed: no)"), "True"),
    (CredentialsProblem(reasons.LOGIN_CONFLICT, "RegistryLogins 'a' and 'b' both log in to r.example"), "True"),
    # Applied together with its build: the login's check comes a moment later, and ends the wait at once.
    (CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (not checked yet)", stalls=False), "False"),
])
def test_a_credentials_problem_blocks_the_start_with_backoff_and_creates_nothing(problem, stalled):
    w = world()
    w.logins = problem
    decision = w.decide()
    assert w.creating == [] and w.jobs == {}
    assert (w.condition("CredentialsReady")["reason"], w.condition("Stalled")["status"]) == (problem.reason, stalled)
    assert w.condition("Reconciling")["status"] == ("False" if stalled == "True" else "True")
    said = w.condition("Stalled" if stalled == "True" else "Reconciling")["message"]
    assert decision.requeue_after == 10 and "kiln looks again at 2026-11-29T10:00:10Z" in said


def test_a_blocked_build_asks_the_registry_again_only_after_its_backoff_or_a_change():
    w = world()
    check = PushCheck(("r.example/team/app",))
    w.answers[check] = RegistryProblem(reasons.PUSH_DENIED, "r.example denies push to team/app", transient=False)
    assert w.decide().requeue_after == 10
    w.answers.pop(check)  # asking now would fail the test: decide must not ask within the backoff
    w.now += datetime.timedelta(seconds=5)
    assert w.decide().requeue_after == pytest.approx(5)
    w.now += datetime.timedelta(seconds=6)
    w.answers[check] = RegistryProblem(reasons.PUSH_DENIED, "r.example denies push to team/app", transient=False)
    assert w.decide().requeue_after == 20  # the second time: twice as long
    assert w.status["retry"]["count"] == 2
    w.logins_revision = "2"  # the login's Secret changed: look at once, and the backoff starts over
    w.answers[check] = None
    w.decide()
    assert [o["kind"] for o in w.creating] == ["Secret", "Job"] and "retry" not in w.status


def test_a_busy_cache_volume_waits_without_stalling_and_looks_again():
    w = world(cache={"type": "local", "volume": {"claimName": "state"}})
    w.volume_holder = "pod other-g1-abc-xyz"
    decision = w.decide()
    assert w.creating == [] and decision.requeue_after == 15
    assert (w.condition("Reconciling")["reason"], w.condition("Stalled")["status"]) == (reasons.WAITING_FOR_CACHE_VOLUME, "False")
    assert "in use by pod other-g1-abc-xyz" in w.condition("Reconciling")["message"]


@pytest.mark.parametrize(("running", "ahead", "queued"), [(0, 0, False), (1, 0, True), (1, 1, True), (0, 1, True),
                                                        (0, 2, True)])
def test_with_a_limit_of_builds_per_namespace_a_build_waits_its_turn_in_line(running, ahead, queued):
    w = world()
    w.settings = Settings(max_builds_per_namespace=1)
    w.namespace_load = (running, ahead)
    decision = w.decide()
    assert bool(w.creating) is not queued
    if queued:
        assert w.condition("Reconciling")["reason"] == reasons.QUEUED and w.condition("Stalled")["status"] == "False"
        assert f"place {ahead + 1} in line" in w.condition("Reconciling")["message"] and decision.requeue_after == 15


def test_auto_puts_every_emulated_platform_in_the_index_not_only_the_first():
    w = world(platforms=["linux/amd64", "linux/arm64", "linux/riscv64"], multiArch={"strategy": "auto"})
    w.ready_archs = frozenset({"amd64"})
    w.decide()
    assert sorted(u["key"] for u in w.status["units"]) == ["amd64", "emulated"]
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.finish(w.job("emulated"), metadata(digest(2), OCI_INDEX))  # one pod, two platforms: an index
    question = AssembleIndex("r.example/team/app", (("linux/amd64", digest(1), OCI_MANIFEST),
                                                    ("linux/arm64", digest(2), OCI_INDEX),
                                                    ("linux/riscv64", digest(2), OCI_INDEX)), ("v1",))
    w.answers[question] = (digest(9), [PlatformImage("linux/amd64", digest(1)), PlatformImage("linux/arm64", digest(3)),
                                       PlatformImage("linux/riscv64", digest(4))])
    w.decide()
    assert w.status["phase"] == "Succeeded"
    assert {p["platform"]: p["builtBy"] for p in w.status["platforms"]} == {
        "linux/amd64": "native", "linux/arm64": "qemu", "linux/riscv64": "qemu"}


def test_auto_with_local_cache_and_nodes_of_both_architectures_is_an_invalid_spec_not_a_crash():
    w = world(platforms=PLATFORMS, cache={"type": "local", "volume": {"claimName": "state"}})
    w.obj["spec"]["multiArch"] = {"strategy": "auto"}  # what an old CRD or a file lets through
    w.decide()
    assert w.status["phase"] == "Failed" and w.condition("Ready")["reason"] == reasons.INVALID_SPEC


def test_a_refused_job_stops_the_build_and_leaves_no_credentials():
    w = native()
    w.decide(refuse="app-" + parse_image_build(w.obj).build_id + "-arm64")
    assert w.jobs == {} and w.credentials == set()
    assert (w.condition("Stalled")["reason"], w.condition("Stalled")["status"]) == (reasons.CREATE_REJECTED, "True")
    assert "admission webhook denied the request" in w.condition("Stalled")["message"]


# -- following a build --

def test_native_build_succeeds_only_when_every_planned_unit_pushed_and_the_index_is_assembled():
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.decide()
    assert w.status["phase"] == "Building"
    w.finish(w.job("arm64"), metadata(digest(2)))
    index_answer(w, digest(1), digest(2))
    w.decide()
    assert (w.status["phase"], w.status["digest"]) == ("Succeeded", digest(9))
    assert [p["platform"] for p in w.status["platforms"]] == PLATFORMS
    assert w.credentials == set() and w.events[-1] == "BuildSucceeded"


def test_a_unit_job_deleted_by_hand_mid_build_is_run_again_never_left_out_of_the_index():
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    del w.jobs[w.job("arm64")]
    w.decide()
    assert w.status["phase"] == "Building" and w.job("arm64").endswith("-arm64-r1")
    assert w.events[-1] == "BuildRetried" and w.credentials  # the new pod needs them


def test_a_unit_job_deleted_by_hand_with_no_retries_left_fails_the_build_naming_its_platform():
    w = world(platforms=PLATFORMS, multiArch={"strategy": "native"}, retries=0)
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    del w.jobs[w.job("arm64")]
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.JOB_LOST
    assert w.status["failure"]["message"].startswith("linux/arm64: its Job was deleted")
    assert not any(isinstance(q, AssembleIndex) for q in w.answers)  # no index of one platform


def test_a_finished_job_deleted_later_loses_nothing():
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.decide()
    del w.jobs[w.job("amd64")]  # a TTL, or a person
    w.finish(w.job("arm64"), metadata(digest(2)))
    index_answer(w, digest(1), digest(2))
    w.decide()
    assert w.status["phase"] == "Succeeded" and len(w.created) == 2


def test_a_login_that_stops_being_ready_after_the_pods_finished_does_not_fail_a_pushed_build():
    w = world()
    w.decide()
    w.finish(w.job("all"), metadata(digest(1)))
    w.logins = CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (SecretNotFound: gone)")
    w.decide()
    assert (w.status["phase"], w.status["digest"]) == ("Succeeded", digest(1))


def test_a_login_that_stops_being_ready_while_the_pod_runs_changes_nothing_for_the_running_build():
    w = world()
    w.decide()
    w.run(w.job("all"))
    w.logins = CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (AuthenticationFailed: no)")
    decision = w.decide()
    assert w.status["phase"] == "Building" and decision.delete_jobs == () and w.credentials  # its pod keeps them
    w.finish(w.job("all"), metadata(digest(1)))
    w.decide()
    assert w.status["phase"] == "Succeeded"


def test_a_native_unit_that_reports_no_digest_is_built_again_and_then_fails_naming_it():
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.finish(w.job("arm64"), "")  # the pod was collected, or its message was lost
    w.decide()
    assert w.job("arm64").endswith("-r1") and w.status["phase"] == "Building"
    w.finish(w.job("arm64"), "")
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.DIGEST_NOT_REPORTED
    assert w.status["failure"]["message"].startswith("linux/arm64: the image was pushed by digest")


def test_one_pod_that_reports_no_digest_takes_the_digest_its_tag_has_in_the_registry():
    w = world()
    w.decide()
    w.finish(w.job("all"), "")
    w.answers[TagDigest("r.example/team/app", "v1")] = (digest(3), OCI_MANIFEST)
    w.decide()
    assert (w.status["phase"], w.status["digest"]) == ("Succeeded", digest(3))


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_job_that_concluded_before_kiln_saw_its_pod_waits_for_the_pods_final_state(exit_code):
    """A busy operator may get a fast build's Job before its pod (separate watch streams): concluding without the
    pod would look for the digest in the registry, or call a failed build's pod evicted."""
    w = world()
    w.decide()
    name = w.job("all")
    w.finish(name, metadata(digest(1)) if exit_code == 0 else "error: failed to solve: exit code: 1", exit_code)
    pod = w.pods.pop(name)
    w.now += datetime.timedelta(seconds=4)
    decision = w.decide()
    assert w.status["phase"] == "Building" and decision.requeue_after == 6
    w.pods[name] = pod
    w.decide()
    assert w.status["phase"] == ("Succeeded" if exit_code == 0 else "Failed")
    assert w.status.get("digest") == (digest(1) if exit_code == 0 else None)
    assert exit_code == 0 or w.status["failure"]["reason"] != reasons.EVICTED


def test_a_job_that_concluded_with_no_pod_seen_for_ten_seconds_is_concluded_from_the_job_and_the_registry():
    w = world()
    w.decide()
    w.finish(w.job("all"), metadata(digest(1)))
    del w.pods[w.job("all")]  # deleted, or collected, before kiln saw it
    w.now += datetime.timedelta(seconds=10)
    w.answers[TagDigest("r.example/team/app", "v1")] = (digest(3), OCI_MANIFEST)
    w.decide()
    assert (w.status["phase"], w.status["digest"]) == ("Succeeded", digest(3))


def test_one_pod_that_reports_no_digest_for_a_tag_the_registry_lacks_fails():
    w = world()
    w.decide()
    w.finish(w.job("all"), "")
    w.answers[TagDigest("r.example/team/app", "v1")] = RegistryProblem(reasons.IMAGE_NOT_FOUND, "r.example has no "
                                                                       "team/app@v1", transient=False)
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.DIGEST_NOT_REPORTED


def test_a_single_pod_index_is_looked_into_for_the_digest_of_each_platform():
    w = world(platforms=PLATFORMS)
    w.decide()
    w.finish(w.job("all"), metadata(digest(5), OCI_INDEX))
    w.answers[ImageContents("r.example/team/app", digest(5), tuple(PLATFORMS))] = [PlatformImage("linux/amd64", digest(1)),
                                                                                   PlatformImage("linux/arm64", digest(2))]
    w.decide()
    assert w.status["digest"] == digest(5)
    assert w.status["platforms"] == [{"platform": "linux/amd64", "digest": digest(1), "builtBy": "qemu"},
                                     {"platform": "linux/arm64", "digest": digest(2), "builtBy": "qemu"}]


@pytest.mark.parametrize(("transient", "phase"), [(True, "Building"), (False, "Failed")])
def test_an_index_the_registry_will_not_take_retries_with_backoff_or_fails(transient, phase):
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.finish(w.job("arm64"), metadata(digest(2)))
    question = index_question(digest(1), digest(2))
    w.answers[question] = RegistryProblem(reasons.REGISTRY_ERROR if transient else reasons.IMAGE_NOT_FOUND, "no", transient)
    decision = w.decide()
    assert w.status["phase"] == phase
    assert (decision.requeue_after == 10) is transient


def test_a_login_deleted_after_the_pods_pushed_fails_the_build_naming_it_instead_of_building_for_ever():
    """What the controller answers when the build's logins are gone (answers.py: a CredentialsProblem that needs
    the user is no transient registry trouble)."""
    w = native()
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1)))
    w.finish(w.job("arm64"), metadata(digest(2)))
    question = index_question(digest(1), digest(2))
    gone = CredentialsProblem(reasons.LOGIN_NOT_FOUND, "RegistryLogin 'reg' named in spec.registryLogins does not exist")
    w.answers[question] = RegistryProblem(gone.reason, gone.message, transient=not gone.stalls)
    w.decide()
    assert w.status["phase"] == "Failed" and w.condition("Stalled")["status"] == "True"
    assert w.status["failure"]["message"] == ("assembling the index: RegistryLogin 'reg' named in spec.registryLogins "
                                              "does not exist")


def test_an_evicted_pod_is_retried_and_a_dockerfile_error_is_not():
    w = world(retries=1)
    w.decide()
    w.finish(w.job("all"), exit_code=137, pod_status={"reason": "Evicted", "message": "low memory"})
    w.decide()
    assert w.job("all").endswith("-r1") and w.status["phase"] == "Building"
    w.finish(w.job("all"), "#7 ERROR: process did not complete successfully: exit code: 2", exit_code=1)
    w.decide()
    assert w.status["failure"]["reason"] == reasons.DOCKERFILE_ERROR and len(w.created) == 2


def test_an_image_pull_failure_waits_for_the_kubelet_then_fails_without_a_new_job():
    w = world()
    w.decide()
    w.pull_fails(w.job("all"))
    decision = w.decide()
    assert w.status["phase"] == "Pending" and w.condition("Reconciling")["reason"] == reasons.BUILDER_IMAGE_PULL_FAILED
    assert decision.requeue_after == 60 and len(w.created) == 1
    w.now += datetime.timedelta(seconds=61)
    w.decide()
    assert w.status["failure"]["reason"] == reasons.BUILDER_IMAGE_PULL_FAILED and len(w.created) == 1
    assert w.jobs == {} and w.credentials == set()


def test_a_job_whose_pods_pod_security_admission_refuses_fails_the_build_at_once():
    w = world()
    w.decide()
    w.now += datetime.timedelta(seconds=11)
    w.answers[JobEvents(w.job("all"))] = [("FailedCreate", 'Error creating: pods "app-g1-x" is forbidden: violates '
                                                           'PodSecurity "baseline:latest": seccompProfile')]
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.POD_SECURITY_REJECTED
    assert "violates PodSecurity" in w.status["failure"]["message"] and w.jobs == {} and w.credentials == set()


def test_a_job_that_cannot_make_its_pod_for_another_reason_says_why_while_kiln_waits():
    w = world()
    assert w.decide().requeue_after == 10  # kiln asks why only once the Job had time to make a pod
    w.now += datetime.timedelta(seconds=11)
    w.answers[JobEvents(w.job("all"))] = [("FailedCreate", 'pods "app-g1-x" is forbidden: exceeded quota: builds')]
    decision = w.decide()
    assert w.status["phase"] == "Pending" and w.condition("Reconciling")["reason"] == reasons.POD_CREATE_FAILED
    assert "exceeded quota" in w.condition("Reconciling")["message"] and decision.requeue_after == 10


# -- changes of mind --

def test_a_spec_edited_to_invalid_mid_build_stops_the_job_and_removes_its_credentials():
    w = world()
    w.decide()
    w.run(w.job("all"))
    w.edit(source={"git": {"url": "https://git.example/app.git"}, "url": "https://e.example/c.tgz"})
    w.decide()
    assert w.jobs == {} and w.credentials == set()
    assert w.status["phase"] == "Failed" and w.status["history"][0]["phase"] == "Cancelled"


def test_an_invalid_spec_is_settled_until_it_is_edited_or_given_a_new_rebuild_token():
    w = world(source={"git": {"url": "https://git.example/app.git"}, "url": "https://e.example/c.tgz"})
    w.decide()
    served = {**w.obj, "metadata": {**w.obj["metadata"], "resourceVersion": "2"}}
    assert w.status["phase"] == "Failed" and settled(served)  # the resync, logins and Jobs leave it alone
    assert not settled({**served, "metadata": {**served["metadata"], "generation": 2}})
    assert not settled({**served, "metadata": {**served["metadata"], "annotations": {"kiln.dev/rebuild": "1"}}})


def test_a_superseded_build_leaves_no_job_and_no_credentials_behind():
    w = world()
    w.decide()
    old = w.status["buildID"]
    w.run(w.job("all"))
    w.edit(source={"git": {"url": "https://git.example/app.git", "revision": "next"}})
    w.decide()
    assert [j["metadata"]["labels"]["kiln.dev/build-id"] for j in w.jobs.values()] == [w.status["buildID"]]
    assert w.credentials == {w.status["buildID"]} and old not in w.credentials
    assert w.status["history"][0] | {"completionTime": None} == {
        "buildID": old, "generation": 1, "jobName": f"app-{old}", "phase": "Cancelled", "reason": reasons.SUPERSEDED,
        "startTime": "2026-11-29T10:00:00Z", "completionTime": None}  # started when its Job was created
    assert "BuildSuperseded" in w.events


def test_suspend_cancels_the_running_build_and_resume_runs_it_as_a_new_attempt():
    w = world()
    w.decide()
    first = w.job("all")
    w.run(first)
    w.edit(suspend=True)
    w.decide()
    assert w.jobs == {} and w.credentials == set() and w.status["phase"] == "Cancelled"
    assert w.status["history"][0]["reason"] == reasons.SUSPENDED
    w.edit(suspend=False)
    w.decide()
    assert list(w.jobs) == [f"{first}-r1"]
    # The resume is no retry: a transient failure now still has the one retry spec.retries gives.
    w.finish(w.job("all"), "error: failed to push: 503 Service Unavailable", exit_code=1)
    w.decide()
    assert w.status["phase"] == "Building" and w.job("all") == f"{first}-r2" and w.events[-1] == "BuildRetried"
    w.finish(w.job("all"), "error: failed to push: 503 Service Unavailable", exit_code=1)
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.REGISTRY_TRANSIENT


@pytest.mark.parametrize("wait", ["queued", "login-not-ready", "cache-volume-busy"])
def test_a_resumed_build_that_must_wait_drops_its_suspended_plan_and_starts_afresh_later(wait):
    w = world(retries=0)
    w.decide()
    first = w.job("all")
    w.run(first)
    w.edit(suspend=True)
    w.decide()
    w.edit(suspend=False)
    if wait == "queued":
        w.settings, w.namespace_load = Settings(image_pull_grace=60, max_builds_per_namespace=1), (1, 0)
    elif wait == "login-not-ready":
        w.logins = CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (x)", stalls=False)
    else:
        w.volume_holder = "pod other-build"
    w.decide()
    assert w.status["phase"] == "Pending" and "units" not in w.status and w.jobs == {}
    w.now += datetime.timedelta(seconds=20)
    w.decide()  # looked at again while it waits: nothing of the suspended plan is followed
    assert w.status["phase"] == "Pending" and "units" not in w.status
    w.namespace_load, w.logins, w.volume_holder, w.logins_revision = (0, 0), list(LOGINS), None, "2"
    w.decide()
    assert list(w.jobs) == [f"{first}-r1"] and w.status["phase"] == "Pending"
    w.finish(w.job("all"), metadata(digest(1)))
    w.decide()
    assert w.status["phase"] == "Succeeded"


def test_a_restart_at_any_point_of_a_native_build_never_creates_a_job_twice():
    """The operator may die after any create of any decision: every prefix (the Secret, two Jobs, and after the
    last of them before its status write), then a clean run to the end."""
    for crash in range(4):
        w = native()
        w.decide(crash_after=crash)
        w.decide()
        w.finish(w.job("amd64"), metadata(digest(1)))
        w.finish(w.job("arm64"), metadata(digest(2)))
        index_answer(w, digest(1), digest(2))
        w.decide()
        assert w.status["phase"] == "Succeeded" and len(w.created) == 2, crash


def test_a_job_made_before_a_crash_for_a_plan_that_changed_since_is_deleted():
    """auto planned both architectures natively, the operator died before writing that plan, and the arm64 node
    left meanwhile: the new plan emulates arm64, and the arm64 Job of the old plan must not push beside it."""
    w = world(platforms=PLATFORMS, multiArch={"strategy": "auto"})
    w.ready_archs = frozenset({"amd64", "arm64"})
    w.decide(crash_after=3)
    assert sorted(j["metadata"]["labels"]["kiln.dev/unit"] for j in w.jobs.values()) == ["amd64", "arm64"]
    w.ready_archs = frozenset({"amd64"})
    w.decide()
    assert sorted(j["metadata"]["labels"]["kiln.dev/unit"] for j in w.jobs.values()) == ["amd64", "emulated"]
    assert sorted(u["key"] for u in w.status["units"]) == ["amd64", "emulated"]


def test_a_crash_after_every_retry_create_before_the_status_write_retries_once():
    for crash in range(3):  # the Secret made again, the retry's Job, and after both
        w = world(retries=1)
        w.decide()
        w.finish(w.job("all"), "error: failed to push: 503 Service Unavailable", exit_code=1)
        w.decide(crash_after=crash)
        w.decide()
        assert w.job("all").endswith("-r1") and len(w.created) == 2, crash
        w.finish(w.job("all"), metadata(digest(1)))
        w.decide()
        assert w.status["phase"] == "Succeeded", crash


def test_a_build_that_waits_to_start_longer_than_its_timeout_fails_timed_out():
    w = world(timeout="5m")
    w.settings, w.namespace_load = Settings(image_pull_grace=60, max_builds_per_namespace=1), (1, 0)
    w.decide()
    assert w.status["phase"] == "Pending" and w.condition("Reconciling")["reason"] == reasons.QUEUED
    w.now += datetime.timedelta(minutes=4)
    w.decide()
    assert w.status["phase"] == "Pending"
    w.now += datetime.timedelta(minutes=2)
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.TIMED_OUT
    assert w.status["failure"]["message"].startswith("waited longer than spec.timeout to start (queued: 1 of at most 1")
    assert w.jobs == {} and w.events[-1] == "BuildFailed"
    w.namespace_load = (0, 0)
    w.decide()  # settled: the slot freeing later starts nothing
    assert w.jobs == {} and w.status["phase"] == "Failed"


def test_a_blocked_build_looks_again_after_a_doubling_wait_capped_at_ten_minutes():
    w = world(timeout="2h")
    w.answers[PushCheck(("r.example/team/app",))] = RegistryProblem(reasons.PUSH_DENIED, "r.example denies it", False)
    waits = []
    for _ in range(9):
        waits.append(w.decide().requeue_after)
        w.now += datetime.timedelta(seconds=waits[-1])
    assert waits == [10, 20, 40, 80, 160, 320, 600, 600, 600]
    w.logins_revision = "2"  # a login (or its Secret) changed: the wait starts over
    assert w.decide().requeue_after == 10


def test_history_keeps_the_limit_and_older_jobs_are_deleted():
    w = world(historyLimit=1)
    w.decide()
    w.finish(w.job("all"), metadata(digest(1)))
    w.decide()
    w.obj["metadata"]["annotations"] = {"kiln.dev/rebuild": "again"}
    w.decide()
    w.finish(w.job("all"), metadata(digest(2)))
    w.decide()
    assert list(w.jobs) == [w.job("all")] and len(w.status["history"]) == 1


def test_the_kept_logs_of_a_build_that_leaves_the_history_are_deleted_once():
    """A warm build's logs belong to the ImageBuild, not to a Job that goes: they go when their build leaves."""
    w = world(historyLimit=1)
    decisions = [w.decide()]
    w.finish(w.job("all"), metadata(digest(1)))
    decisions.append(w.decide())
    first = w.status["buildID"]
    w.obj["metadata"]["annotations"] = {"kiln.dev/rebuild": "again"}
    decisions.append(w.decide())
    w.finish(w.job("all"), metadata(digest(2)))
    decisions += [w.decide(), w.decide()]
    assert [d.delete_logs for d in decisions if d.delete_logs] == [(first,)]
    assert [item["buildID"] for item in w.status["history"]] == [w.status["buildID"]]


def test_a_push_refused_after_the_password_was_rotated_is_retried_with_the_new_one():
    """The registry revoked the old password mid-build; kiln had already checked the login with the new one."""
    w = world(retries=1)
    w.decide()
    w.logins_revision = "2"  # the Secret got the new password, the login was verified Ready with it
    w.finish(w.job("all"), "error: failed to push r.example/team/app:v1: unexpected status: 401 Unauthorized",
             exit_code=1)
    w.decide()
    assert w.job("all").endswith("-r1") and w.events[-1] == "BuildRetried"
    w.finish(w.job("all"), "error: failed to push r.example/team/app:v1: unexpected status: 401 Unauthorized",
             exit_code=1)
    w.decide()  # refused with the credentials the logins hold now: a real denial
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.PUSH_DENIED


def test_a_push_refused_is_not_retried_for_a_change_of_the_secrets_the_build_mounts():
    """Only the logins' credentials are the push's: a mounted Secret seen before the start is no new password."""
    w = world(retries=1, secrets=[{"id": "npm", "secretRef": {"name": "npm-token", "key": ".npmrc"}}])
    w.mounts_revision = "7"
    w.decide()
    w.mounts_revision = ""  # started: gather no longer reads the mounted Secrets
    w.finish(w.job("all"), "error: failed to push r.example/team/app:v1: unexpected status: 401 Unauthorized",
             exit_code=1)
    w.decide()
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.PUSH_DENIED


def test_a_retry_that_waits_for_a_login_retries_once_the_login_is_ready_again():
    w = world()
    w.decide()
    first = w.job("all")
    w.finish(first, "error: failed to push: 503 Service Unavailable", exit_code=1)
    w.logins = CredentialsProblem(reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (x)", stalls=False)
    w.decide()
    assert w.status["phase"] == "Building" and "a retry waits" in w.condition("Reconciling")["message"]
    w.now += datetime.timedelta(seconds=30)
    w.decide()  # looked at again, the login still not Ready: still waiting, not failed
    assert w.status["phase"] == "Building" and w.status["units"][0]["phase"] == "Pending"
    w.logins, w.logins_revision = list(LOGINS), "2"
    w.decide()
    assert w.job("all") == f"{first}-r1" and w.status["phase"] == "Building" and w.events[-1] == "BuildRetried"


def test_a_unit_no_node_fits_is_shown_while_the_other_unit_builds():
    w = native()
    w.decide()
    w.run(w.job("amd64"))
    w.pods[w.job("arm64")] = {"metadata": {"name": "arm64-pod"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 1 node(s) were unschedulable"}]}}
    w.decide()
    assert w.status["phase"] == "Building"
    assert w.condition("Reconciling")["message"] == ("building; linux/arm64: waiting for a node: 0/2 nodes are "
                                                     "available: 1 node(s) were unschedulable")


def test_a_unit_whose_node_stopped_reporting_is_shown_not_hidden_behind_building():
    w = native()
    w.decide()
    w.run(w.job("amd64"))
    w.run(w.job("arm64"))
    w.pods[w.job("arm64")]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]  # the node controller
    w.decide()
    assert w.status["phase"] == "Building"
    assert w.condition("Reconciling")["message"].startswith("building; linux/arm64: its node is not Ready")


def test_a_retry_job_the_api_server_refuses_fails_the_build_saying_so_not_as_a_deleted_job():
    w = world()
    w.decide()
    first = w.job("all")
    w.finish(first, "error: failed to push: 503 Service Unavailable", exit_code=1)
    w.decide(refuse=f"{first}-r1")
    assert w.status["phase"] == "Failed" and w.status["failure"]["reason"] == reasons.CREATE_REJECTED
    assert f"the API server refused to create Job {first}-r1: admission webhook denied" in w.status["failure"]["message"]
    assert w.credentials == set()
    w.decide()  # and it stays so
    assert w.status["failure"]["reason"] == reasons.CREATE_REJECTED


@pytest.mark.parametrize(("archs", "arch"), [({"amd64", "arm64"}, "arm64"), ({"amd64"}, None)])
def test_a_build_that_names_no_platform_builds_for_the_operators_default_one(archs, arch):
    w = world()
    w.settings, w.ready_archs = Settings(image_pull_grace=60, default_platform="linux/arm64"), frozenset(archs)
    w.decide()
    (unit,) = w.status["units"]
    assert (unit["platforms"], unit.get("arch")) == (["linux/arm64"], arch)
    (job,) = w.jobs.values()
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--opt=platform=linux/arm64" in args
    assert job["spec"]["template"]["spec"]["nodeSelector"].get("kubernetes.io/arch") == arch


def test_a_reverted_rebuild_token_builds_again_instead_of_reporting_the_first_builds_old_result():
    """rebuild=1, then the annotation removed (Argo CD syncing an older manifest): the first build's ID again."""
    w = world()
    w.decide()
    first = w.status["buildID"]
    w.finish(w.job("all"), metadata(digest(1)))
    w.decide()
    w.obj["metadata"]["annotations"] = {"kiln.dev/rebuild": "1"}
    w.decide()
    w.finish(w.job("all"), metadata(digest(2)))
    w.decide()
    second = w.status["buildID"]
    del w.obj["metadata"]["annotations"]
    w.decide()
    third = w.status["buildID"]
    assert third not in (first, second) and w.status["phase"] == "Pending" and len(w.created) == 3
    w.decide()  # decided again before anything changed: the same build, no other Job
    assert w.status["buildID"] == third and len(w.created) == 3
    w.finish(w.job("all"), metadata(digest(3)))
    w.decide()
    assert w.status["phase"] == "Succeeded" and w.status["digest"] == digest(3)


# -- the start policies, in their order --

def _backing_off(w: World, state: dict) -> None:
    key = f"{parse_image_build(w.obj).identity}/{w.logins_revision}/{w.mounts_revision}"
    state["carried"] = {"retry": {"reason": reasons.PUSH_DENIED, "count": 1, "key": key, "after": "2026-11-29T10:00:10Z"}}


# Each makes one start policy say no, by its name in START_POLICIES, in the order they are asked: why this order. A
# backoff ends only with a change; logins first, as nothing can be checked without them; then the Secrets the pod
# would mount (a build must not run with one it may not use); a place in line and a free
# volume before the registries are asked anything; the API server's refusal is known only after a create.
SAY_NO = {
    "blocked a moment ago, nothing changed since": _backing_off,
    "its logins are Ready": lambda w, state: setattr(w, "logins", CredentialsProblem(
        reasons.LOGIN_NOT_READY, "RegistryLogin 'reg' is not Ready (AuthenticationFailed: no)")),
    "the Secrets it mounts opted in": lambda w, state: setattr(w, "mounts", CredentialsProblem(
        reasons.SECRET_NOT_OPTED_IN, "Secret 'npm' has not opted in to ImageBuilds")),
    "its turn in the namespace": lambda w, state: (setattr(w, "settings", Settings(max_builds_per_namespace=1)),
                                                   setattr(w, "namespace_load", (1, 0))),
    "its local cache volume is free": lambda w, state: setattr(w, "volume_holder", "default/other"),
    "the registries accept its pushes": lambda w, state: w.answers.__setitem__(
        PushCheck(("r.example/team/app",)), RegistryProblem(reasons.PUSH_DENIED, "r.example denies it", transient=False)),
    "the API server accepted its children": lambda w, state: state.update(refused=("Job app-g1-x", "denied")),
}


def _verdict(names: list[str]) -> tuple[str, object]:
    w, state = world(), {"carried": {}, "refused": None}
    for name in names:
        SAY_NO[name](w, state)
    facts = w.facts(refused=state["refused"])
    return start_verdict(facts, facts.spec, state["carried"])


@pytest.mark.parametrize("first", range(len(START_POLICIES)), ids=[name for name, _ in START_POLICIES])
def test_the_start_policies_are_asked_in_order_and_the_first_that_says_no_decides(first):
    """Every policy from `first` on says no (a refusal aside, which ends a backoff: see below); the verdict is
    `first`'s, whatever the later ones would say."""
    names = [name for name, _ in START_POLICIES]
    assert names == list(SAY_NO)
    later = [n for n in names[first:] if not (first == 0 and n == "the API server accepted its children")]
    said, verdict = _verdict(later)
    assert said == names[first] and verdict is not None


def test_a_refusal_of_the_api_server_is_reported_at_once_even_within_a_backoff():
    said, verdict = _verdict(["blocked a moment ago, nothing changed since", "the API server accepted its children"])
    assert said == "the API server accepted its children" and verdict.undo


def test_a_build_no_start_policy_holds_back_starts():
    assert _verdict([]) == ("", None)


# -- attestations and signing: concluding asks for a signature once the image is pushed --

PROVENANCE, SPDX = "https://slsa.dev/provenance/v1", "https://spdx.dev/Document"
SIGNING = {"cosign": {"keySecretRef": {"name": "cosign-key"}}}
SIGN = SignImage("r.example/team/app", digest(9), "cosign-key")


def signed_native(answer) -> World:
    """A native two-platform build with attestations and signing, its index assembled, signing answered so."""
    w = world(platforms=PLATFORMS, multiArch={"strategy": "native"}, signing=SIGNING)
    w.decide()
    w.finish(w.job("amd64"), metadata(digest(1), OCI_INDEX))
    w.finish(w.job("arm64"), metadata(digest(2), OCI_INDEX))
    question = AssembleIndex("r.example/team/app", (("linux/amd64", digest(1), OCI_INDEX),
                                                    ("linux/arm64", digest(2), OCI_INDEX)), ("v1",))
    w.answers[question] = (digest(9), [PlatformImage("linux/amd64", digest(3), Attestation(digest(5), (PROVENANCE, SPDX))),
                                       PlatformImage("linux/arm64", digest(4), Attestation(digest(6), (PROVENANCE,)))])
    w.answers[SIGN] = answer
    return w


def test_a_signed_build_is_ready_with_its_signature_and_each_platforms_attestation():
    w = signed_native(Signature(f"r.example/team/app@{digest(7)}", "SHA256:ab12"))
    w.decide()
    assert (w.status["phase"], w.condition("Ready")["status"]) == ("Succeeded", "True")
    assert w.status["signature"] == {"reference": f"r.example/team/app@{digest(7)}", "keyFingerprint": "SHA256:ab12"}
    assert w.status["platforms"] == [
        {"platform": "linux/amd64", "digest": digest(3), "builtBy": "native",
         "attestation": {"digest": digest(5), "predicateTypes": [PROVENANCE, SPDX]}},
        {"platform": "linux/arm64", "digest": digest(4), "builtBy": "native",
         "attestation": {"digest": digest(6), "predicateTypes": [PROVENANCE]}}]


def test_the_index_is_signed_not_the_platform_images():
    w = signed_native(None)
    del w.answers[SIGN]
    with pytest.raises(AssertionError, match="unanswered question SignImage"):
        w.decide()
    # The assembled index's digest: it covers every platform and its attestations.
    w.answers[SIGN] = Signature("r.example/team/app@" + digest(7), "SHA256:ab12")
    w.decide()
    assert w.status["phase"] == "Succeeded"


def test_a_signing_failure_fails_the_build_and_still_reports_what_was_pushed():
    w = signed_native(RegistryProblem(reasons.SIGNING_FAILED, "cosign.password does not decrypt cosign.key", False))
    w.decide()
    assert w.status["phase"] == "Failed"
    ready = w.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", reasons.SIGNING_FAILED)
    assert ready["message"] == (f"pushed r.example/team/app@{digest(9)}, but signing it failed: "
                                "cosign.password does not decrypt cosign.key")
    assert (w.status["digest"], w.status["image"]) == (digest(9), f"r.example/team/app@{digest(9)}")
    assert [p["digest"] for p in w.status["platforms"]] == [digest(3), digest(4)]
    assert w.status["failure"]["reason"] == reasons.SIGNING_FAILED and "signature" not in w.status
    assert w.status["history"][0] | {"phase": "Failed", "reason": reasons.SIGNING_FAILED, "digest": digest(9)} == \
        w.status["history"][0]
    assert len(w.status["history"]) == 1
    assert w.events[-1] == "BuildFailed"
    del w.answers[SIGN]
    w.decide()  # nothing is signed again (it would ask) until the user asks for a rebuild
    assert w.status["phase"] == "Failed"


def test_a_registry_that_fails_while_signing_is_asked_again_after_a_backoff():
    w = signed_native(RegistryProblem(reasons.SIGNING_FAILED, "cosign: 503 Service Unavailable", True))
    decision = w.decide()
    assert w.status["phase"] == "Building" and decision.requeue_after
    assert w.condition("Ready")["status"] == "False"
    assert "the images are built; signing: cosign: 503" in w.condition("Reconciling")["message"]
    w.now += datetime.timedelta(seconds=decision.requeue_after + 1)
    w.answers[SIGN] = Signature("r.example/team/app@" + digest(7), "SHA256:ab12")
    w.decide()
    assert w.status["phase"] == "Succeeded" and w.status["signature"]["keyFingerprint"] == "SHA256:ab12"


def test_a_single_platform_image_is_signed_by_the_digest_buildkit_pushed():
    w = world(signing=SIGNING, platforms=["linux/amd64"])
    w.decide()
    w.finish(w.job("all"), metadata(digest(5), OCI_INDEX))  # provenance makes it an index
    w.answers[ImageContents("r.example/team/app", digest(5), ("linux/amd64",))] = [
        PlatformImage("linux/amd64", digest(1), Attestation(digest(2), (PROVENANCE,)))]
    w.answers[SignImage("r.example/team/app", digest(5), "cosign-key")] = Signature("r.example/team/app@" + digest(7), "SHA256:cd")
    w.decide()
    assert w.status["phase"] == "Succeeded" and w.status["signature"]["reference"].endswith(digest(7))
    assert w.status["platforms"][0]["attestation"] == {"digest": digest(2), "predicateTypes": [PROVENANCE]}
