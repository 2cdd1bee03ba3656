"""observe and status: Job + Pod -> what happened, and conditions as the API conventions want them (pure)."""
import json

import pytest

from kiln.build.outcomes import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UnitState,
    cache_stats,
    classify_failure,
    excerpt,
    observe_unit,
    sbom_generator_failure,
)
from kiln.build.status import (
    BUILDING,
    CANCELLED,
    condition,
    duration,
    phase_conditions,
    short_digest,
    with_history,
    with_transition_times,
)
from kiln.build.status import SUCCEEDED as PHASE_SUCCEEDED
from kiln.spec import reasons

JOB = {"metadata": {"name": "app-g1-abc123"}, "status": {"startTime": "2026-11-28T10:00:00Z"}}


def job(*conditions, completion=None) -> dict:
    return {**JOB, "status": {**JOB["status"], "conditions": list(conditions),
                              **({"completionTime": completion} if completion else {})}}


def pod(state: dict, **status) -> dict:
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "buildkit", "state": state}], **status}}


COMPLETE = {"type": "Complete", "status": "True"}
FAILED_JOB = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": "2026-11-28T10:05:00Z"}


def test_a_completed_job_reports_the_digest_from_the_termination_message():
    message = json.dumps({"containerimage.digest": "sha256:" + "1" * 64,
                          "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.index.v1+json"}})
    state = observe_unit(job(COMPLETE, completion="2026-11-28T10:03:00Z"), pod({"terminated": {"exitCode": 0, "message": message}}))
    assert (state.phase, state.digest, state.media_type) == (SUCCEEDED, "sha256:" + "1" * 64, "application/vnd.oci.image.index.v1+json")
    assert state.completion_time == "2026-11-28T10:03:00Z"


def test_the_digest_survives_the_kubelet_cutting_a_long_termination_message_at_4_kib():
    """buildctl writes sorted, indented JSON; many long tags push image.name far past the 4 KiB the kubelet keeps."""
    digest = "sha256:" + "2" * 64
    metadata = {"containerimage.config.digest": "sha256:" + "3" * 64,
                "containerimage.descriptor": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
                                              "size": 645, "annotations": {"org.opencontainers.image.created": "now"}},
                "containerimage.digest": digest,
                "image.name": ",".join(f"registry.example.com/team/app:release-{i:04d}-{'x' * 100}" for i in range(32))}
    message = json.dumps(metadata, indent=2, sort_keys=True)[:4096]
    with pytest.raises(ValueError):
        json.loads(message)
    state = observe_unit(job(COMPLETE), pod({"terminated": {"exitCode": 0, "message": message}}))
    assert (state.digest, state.media_type) == (digest, "application/vnd.oci.image.index.v1+json")


@pytest.mark.parametrize(("the_job", "the_pod", "phase", "reason", "retryable"), [
    (None, None, PENDING, reasons.BUILD_PENDING, False),
    (JOB, None, PENDING, reasons.BUILD_PENDING, False),
    (JOB, pod({"running": {"startedAt": "x"}}), RUNNING, reasons.BUILDING, False),
    (JOB, pod({"terminated": {"exitCode": 0}}), RUNNING, reasons.BUILDING, False),  # its Job has not concluded yet
    (JOB, pod({"waiting": {"reason": "ImagePullBackOff", "message": "denied"}}), FAILED, reasons.BUILDER_IMAGE_PULL_FAILED, True),
    (JOB, pod({"waiting": {"reason": "InvalidImageName", "message": "bad"}}), FAILED, reasons.BUILDER_IMAGE_PULL_FAILED, False),
    (job({**FAILED_JOB, "reason": "DeadlineExceeded"}), pod({"terminated": {"exitCode": 137}}), FAILED, reasons.TIMED_OUT, False),
    (job(FAILED_JOB), pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}), FAILED, reasons.OUT_OF_MEMORY, False),
    (job(FAILED_JOB), pod({"terminated": {"exitCode": 137}}, reason="Evicted", message="low memory"), FAILED, reasons.EVICTED, True),
    (job(FAILED_JOB), pod({"terminated": {"exitCode": 137}}, conditions=[{"type": "DisruptionTarget", "status": "True"}]),
     FAILED, reasons.EVICTED, True),
    (job(FAILED_JOB), None, FAILED, reasons.EVICTED, True),  # the pod is gone with its node
    # Deleted by hand: the script stopped the build on SIGTERM (exit 143); the same as when kiln sees it gone.
    (job(FAILED_JOB), pod({"terminated": {"exitCode": 143, "reason": "Error", "message": "#7 CANCELED\n"}}),
     FAILED, reasons.EVICTED, True),
    # The Job's end came first on its watch stream; the pod's end (digest, log) has not arrived yet.
    (job(COMPLETE), pod({"running": {"startedAt": "x"}}, phase="Running"), RUNNING, reasons.BUILDING, False),
    (job(COMPLETE), pod({}, phase="Pending"), RUNNING, reasons.BUILDING, False),
    (job(FAILED_JOB), pod({"running": {"startedAt": "x"}}, phase="Running"), RUNNING, reasons.BUILDING, False),
    (job({**FAILED_JOB, "reason": "DeadlineExceeded"}), pod({"running": {"startedAt": "x"}}), FAILED, reasons.TIMED_OUT, False),
    (job(FAILED_JOB), pod({"running": {"startedAt": "x"}}, phase="Running", reason="Evicted"), FAILED, reasons.EVICTED, True),
], ids=["no-job", "no-pod", "running", "ended-job-not-yet", "builder-pull-backoff", "builder-bad-name", "deadline", "oom", "evicted",
        "disruption", "node-lost", "deleted-by-hand", "completed-job-pod-not-yet", "completed-job-pod-pending", "failed-job-pod-not-yet",
        "deadline-pod-still-running", "evicted-while-running"])
def test_job_and_pod_states_map_to_a_phase_and_reason(the_job, the_pod, phase, reason, retryable):
    state = observe_unit(the_job, the_pod)
    assert (state.phase, state.reason, state.retryable) == (phase, reason, retryable)


@pytest.mark.parametrize(("log", "reason", "retryable"), [
    ('error: failed to solve: process "/bin/sh -c mvn package" did not complete successfully: exit code: 1',
     reasons.DOCKERFILE_ERROR, False),
    ("error: failed to solve: dockerfile parse error on line 3: unknown instruction: COPPY", reasons.DOCKERFILE_ERROR, False),
    ("error: failed to solve: failed to compute cache key: \"/target/app.jar\" not found", reasons.DOCKERFILE_ERROR, False),
    ("error: failed to solve: r.io/base:1: failed to resolve source metadata for r.io/base:1: pull access denied",
     reasons.BASE_IMAGE_PULL_DENIED, False),
    ("error: failed to solve: r.io/base:9: failed to resolve source metadata for r.io/base:9: r.io/base:9: not found",
     reasons.BASE_IMAGE_PULL_DENIED, False),
    ("error: failed to solve: failed to push r.io/app:v1: unexpected status: 403 Forbidden", reasons.PUSH_DENIED, False),
    ("error: failed to solve: failed to push r.io/app:v1: unexpected status: 502 Bad Gateway", reasons.REGISTRY_TRANSIENT, True),
    ("error: failed to solve: failed to do request: toomanyrequests: rate limit", reasons.REGISTRY_TRANSIENT, True),
    ("error: failed to solve: failed to push r.io/team/api:v1: errors:\nunknown: provided digest did not match uploaded "
     "content\nunknown: blob unknown to registry - sha256:d202", reasons.REGISTRY_TRANSIENT, True),
    ("error: failed to solve: failed to push r.io/app:v1: errors:\nblob upload unknown to registry", reasons.REGISTRY_TRANSIENT,
     True),
    ("error: failed to solve: read tcp 10.0.0.1:1->10.0.0.2:443: read: connection reset by peer", reasons.REGISTRY_TRANSIENT, True),
    # A push target or base registry that is down, or a network that is (seen: a registry restarted mid-build).
    ("#11 ERROR: failed to push 10.88.0.2:5001/team/app:v1: failed to do request: Put \"https://10.88.0.2:5001/v2/"
     "team/app/blobs/uploads/x\": dial tcp 10.88.0.2:5001: connect: connection refused", reasons.REGISTRY_TRANSIENT, True),
    ("error: failed to solve: r.io/base:1: failed to resolve source metadata for r.io/base:1: failed to do request: Head "
     "\"https://r.io/v2/base/manifests/1\": dial tcp 10.0.0.9:443: connect: no route to host", reasons.REGISTRY_TRANSIENT, True),
    ("failed to do request: dial tcp: lookup r.io on 10.96.0.10:53: no such host", reasons.REGISTRY_TRANSIENT, True),
    ("dial tcp 10.0.0.9:443: connect: network is unreachable", reasons.REGISTRY_TRANSIENT, True),
    ("something nobody has seen before", reasons.BUILD_FAILED, False),
])
def test_build_output_is_classified(log, reason, retryable):
    assert classify_failure(log)[:2] == (reason, retryable)


def test_cache_statistics_count_dockerfile_steps_but_not_from_lines_from_plain_progress():
    log = "\n".join([
        "#1 [internal] load build definition from Dockerfile", "#5 [linux/amd64 1/3] FROM r.io/base:1@sha256:ab",
        "#6 [linux/arm64 1/3] FROM r.io/base:1@sha256:ab", "#7 [linux/amd64 2/3] COPY deploy.sh deploy.sh", "#7 CACHED",
        "#8 [linux/arm64 2/3] COPY deploy.sh deploy.sh", "#8 CACHED", "#9 [2/2] COPY app.jar app.jar", "#9 DONE 0.1s",
        "#10 exporting cache to registry", "#10 CACHED",
    ])
    assert cache_stats(log) == (2, 3)  # a FROM names the base image: BuildKit never reports it CACHED


def test_a_step_loaded_from_an_imported_cache_for_a_changed_later_step_counts_as_cached():
    """What BuildKit printed in the e2e tier after only the last COPY changed (its layer digests proved the reuse)."""
    log = "\n".join([
        "#5 [1/4] FROM 10.88.0.2:5000/hub-mirrors/base:v1@sha256:d850", "#5 DONE 0.0s",
        "#6 importing cache manifest from 10.88.0.2:5000/hub-mirrors/openjdk:app1-flow-cache", "#6 DONE 0.0s",
        "#8 [2/4] RUN echo built > /built", "#8 CACHED",
        "#9 [3/4] COPY deploy.sh /deploy.sh", "#9 sha256:650d 199B / 199B 0.0s done",
        "#9 extracting sha256:650d4d90ae35958b 0.0s done", "#9 DONE 0.1s",
        "#10 [4/4] COPY target/application.jar /app.jar", "#10 DONE 0.0s",
    ])
    assert cache_stats(log) == (2, 3)


def test_excerpt_keeps_the_last_lines_within_a_bound():
    text = "\n".join(f"line {i}" for i in range(100))
    assert excerpt(text).splitlines()[-1] == "line 99" and len(excerpt(text).splitlines()) == 15
    assert len(excerpt("x" * 5000)) == 1500


def test_last_transition_time_changes_only_when_status_changes():
    first = with_transition_times(None, [condition("Ready", False, "Building", "building", 1)], "T1")
    same = with_transition_times(first, [condition("Ready", False, "BuildPending", "waiting", 2)], "T2")
    flipped = with_transition_times(same, [condition("Ready", True, "Succeeded", "pushed", 2)], "T3")
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["T1", "T1", "T3"]
    assert same[0]["reason"] == "BuildPending" and same[0]["observedGeneration"] == 2


def test_conditions_written_by_others_are_kept():
    theirs = {"type": "example.com/Approved", "status": "True", "reason": "Approved", "message": "", "lastTransitionTime": "T0"}
    merged = with_transition_times([theirs], [condition("Ready", True, "Succeeded", "", 1)], "T1")
    assert merged[-1] == theirs


@pytest.mark.parametrize(("phase", "ready", "reconciling", "stalled"), [
    (PHASE_SUCCEEDED, "True", "False", "False"), (BUILDING, "False", "True", "False"), ("Pending", "False", "True", "False"),
    ("Failed", "False", "False", "True"), (CANCELLED, "False", "False", "False"),
])
def test_phases_map_to_kstatus_conditions(phase, ready, reconciling, stalled):
    by_type = {c["type"]: c["status"] for c in phase_conditions(phase, "R", "m", 1)}
    assert (by_type["Ready"], by_type["Reconciling"], by_type["Stalled"]) == (ready, reconciling, stalled)


def test_durations_digests_and_history_are_shown_compactly():
    assert duration("2026-11-28T10:00:00Z", "2026-11-28T11:03:07Z") == "1h3m7s"
    assert duration("2026-11-28T10:00:00Z", "2026-11-28T10:00:42Z") == "42s"
    assert duration(None, "2026-11-28T10:00:42Z") is None
    assert short_digest("sha256:0123456789abcdef") == "0123456789ab"
    history = with_history([{"buildID": "a"}, {"buildID": "b"}], {"buildID": "b", "phase": "Succeeded"}, limit=2)
    assert history == [{"buildID": "b", "phase": "Succeeded"}, {"buildID": "a"}]
    assert with_history(history, {"buildID": "c"}, limit=2) == [{"buildID": "c"}, {"buildID": "b", "phase": "Succeeded"}]


def test_status_patch_is_none_when_nothing_changed_and_removes_what_is_gone():
    from kiln.build.status import status_patch

    new = {"phase": "Building", "conditions": [condition("Ready", False, "Building", "building", 1)]}
    written = status_patch(None, new, "T1")
    assert written["conditions"][0]["lastTransitionTime"] == "T1"
    assert status_patch(written, new, "T2") is None  # no write, so no watch event and no reconcile loop
    later = status_patch({**written, "failure": {"reason": "X"}}, {**new, "phase": "Succeeded"}, "T3")
    assert later["failure"] is None and later["phase"] == "Succeeded"
    assert later["conditions"][0]["lastTransitionTime"] == "T1"  # Ready stayed False


def test_a_failing_sbom_generator_is_told_apart_from_a_failing_dockerfile_step():
    log = ('#9 [linux/amd64] generating sbom using r.example/tools/scanner:1\n#9 ERROR: process "/usr/bin/scan" did not '
           'complete successfully: exit code: 2\nerror: failed to solve: process "/usr/bin/scan" did not complete '
           'successfully: exit code: 2\n')
    reason, retryable, summary = classify_failure(log)
    assert reason == reasons.DOCKERFILE_ERROR
    state = sbom_generator_failure(UnitState(FAILED, reason, summary, retryable, log_excerpt=log), "r.example/tools/scanner:1")
    assert (state.reason, state.message, state.retryable) == (
        reasons.SBOM_GENERATOR_FAILED, "the SBOM generator r.example/tools/scanner:1 failed", False)
    other = sbom_generator_failure(UnitState(FAILED, reason, summary, log_excerpt=log), "r.example/tools/other:1")
    assert other.reason == reasons.DOCKERFILE_ERROR  # another image's step is the Dockerfile's
