"""A build pod's Job and Pod -> what happened to it (pure): the outcome the observe step reads.

The digest comes from the termination message (buildctl's metadata file); on
failure the kubelet puts the log tail there instead (FallbackToLogsOnError), which
is what failures are classified from.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from kiln.spec import reasons


class UnitPhase(enum.StrEnum):
    """What one BuildKit pod of a build (a unit in status.units) is doing."""
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


PENDING, RUNNING, SUCCEEDED, FAILED = UnitPhase.PENDING, UnitPhase.RUNNING, UnitPhase.SUCCEEDED, UnitPhase.FAILED
_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_AUTH = r"(401 Unauthorized|403 Forbidden|unauthorized|denied|insufficient_scope|authorization failed|failed to authorize)"
# (reason, retryable, summary, pattern); the first that matches the log tail wins.
_FAILURE_PATTERNS = [
    # The operator's proxy refused a token fetch of buildctl's on a warm build (clients/egress_proxy.py).
    (reasons.ADDRESS_NOT_ALLOWED, False, "a registry named a token service at an address the operator may not "
     "connect to", r"kiln refuses to connect to"),
    # kiln's own words when a warm builder's pod is refused (controller/runs.py): no build ran.
    (reasons.POD_SECURITY_REJECTED, False, "the namespace's Pod Security admission refuses the warm builder's pod; "
     "rootless BuildKit needs the privileged level, see the README", r"^kiln: .*violates PodSecurity"),
    (reasons.PUSH_DENIED, False, "the registry refused the push",
     rf"(failed to push|error exporting|failed to export|pushing).*{_AUTH}"),
    (reasons.BASE_IMAGE_PULL_DENIED, False, "a FROM image could not be pulled: access denied or not found",
     rf"(failed to resolve source metadata|pull access denied|failed to do request|failed to copy).*({_AUTH}|not found)"),
    (reasons.REGISTRY_TRANSIENT, True, "a registry or the network failed transiently",
     r"(500 Internal Server Error|502 Bad Gateway|503 Service Unavailable|504 Gateway Timeout|429 Too Many Requests"
     r"|toomanyrequests|connection reset by peer|i/o timeout|TLS handshake timeout|unexpected EOF"
     # A registry that is down, or a network that is: it comes back.
     r"|connection refused|no route to host|network is unreachable|connect: connection timed out|no such host"
     r"|server misbehaving"
     # An upload the registry lost or saw corrupted; BuildKit since v0.28 pushes the image and the cache at
     # once, and two uploads of one blob can race on the registry's side. Pushing again finds the blob there.
     r"|failed to push[\s\S]*(provided digest did not match uploaded content|blob upload (unknown|invalid)))"),
    (reasons.DOCKERFILE_ERROR, False, "a Dockerfile step failed",
     r"(did not complete successfully|dockerfile parse error|failed to read dockerfile|failed to compute cache key"
     r"|failed to parse stage name|unknown instruction|failed to solve: .*(not found|invalid))"),
]
# A Dockerfile step ("#12 [linux/amd64 3/4] COPY ..."); FROM only names the base, it is never "cached".
_STEP = re.compile(r"^#(\d+) \[(?:[^\]]* )?\d+/\d+\] (?!FROM )", re.MULTILINE)
_CACHED = re.compile(r"^#(\d+) CACHED\s*$", re.MULTILINE)
# A step whose own layers were downloaded and unpacked came from an imported cache: BuildKit prints no
# CACHED for a result it only loads because a later, changed step builds on it.
_LOADED = re.compile(r"^#(\d+) extracting sha256:", re.MULTILINE)
_DIGEST = re.compile(r'"containerimage\.digest"\s*:\s*"(sha256:[0-9a-f]{64})"')
# The descriptor's own mediaType, past a nested object such as its annotations.
_MEDIA_TYPE = re.compile(r'"containerimage\.descriptor"\s*:\s*\{(?:[^{}]|\{[^{}]*\})*?"mediaType"\s*:\s*"([^"]+)"')


STOPPED_EXIT_CODE = 143  # 128 + SIGTERM: render.BUILD_SCRIPT stopped the build when asked to
WAITING_FOR_POD = "waiting for the build pod to start"  # what a unit says from its Job's creation until it runs
WAITING_FOR_NODE = "waiting for a node"  # the scheduler finds none the pod fits
# What a run on a warm builder waits for (controller/runs.py shows it as its pod's waiting reason).
BUILDER_STARTING, BUILDER_UNREACHABLE = "BuilderStarting", "BuilderUnreachable"
NODE_NOT_READY = ("its node is not Ready: the build resumes if the node comes back, else its pod is evicted "
                  "and the build retried")


@dataclass(frozen=True)
class UnitState:
    phase: str  # Pending, Running, Succeeded or Failed
    reason: str = ""
    message: str = ""
    retryable: bool = False
    digest: str | None = None
    media_type: str | None = None
    log_excerpt: str = ""
    completion_time: str | None = None
    cached_steps: int | None = None  # Dockerfile steps BuildKit took from a cache (from the build log)
    total_steps: int | None = None
    log: str | None = None  # the ConfigMap keeping the pod's log (build/logs.py)


def excerpt(text: str, lines: int = 15, limit: int = 1500) -> str:
    """The last lines of build output, short enough for a status field."""
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return tail[-limit:]


REDACTED = "[redacted]"
_SHORTEST_REDACTED = 4  # shorter pieces of a secret are too common to hide (and say nothing)


def redacted(text: str, values: frozenset[str]) -> str:
    """text without any of the values (each line of a multi-line one), nor the end of one that the text, a tail
    of a longer log, begins in the middle of, nor the start of one that it, a head, is cut in."""
    pieces = {line.strip() for value in values for line in value.splitlines()}
    pieces = sorted((p for p in pieces if len(p) >= _SHORTEST_REDACTED), key=len, reverse=True)
    for piece in pieces:
        text = text.replace(piece, REDACTED)
    for piece in pieces:
        cut = next((n for n in range(len(piece) - 1, _SHORTEST_REDACTED - 1, -1) if text.startswith(piece[-n:])), 0)
        if cut:
            text = REDACTED + text[cut:]
        cut = next((n for n in range(len(piece) - 1, _SHORTEST_REDACTED - 1, -1) if text.endswith(piece[:n])), 0)
        if cut:
            text = text[:-cut] + REDACTED
    return text


def classify_failure(log: str) -> tuple[str, bool, str]:
    """(reason, retryable, summary) of a failed build from its output."""
    for reason, retryable, summary, pattern in _FAILURE_PATTERNS:
        if re.search(pattern, log, re.IGNORECASE):
            return reason, retryable, summary
    return reasons.BUILD_FAILED, False, "the build failed"


def sbom_generator_failure(state: UnitState, generator: str) -> UnitState:
    """A failure of the SBOM generator, not of the Dockerfile: BuildKit words its pull like a FROM image's, and
    its run as a step's ("generating sbom using IMAGE")."""
    if state.phase != FAILED or state.reason not in (reasons.BASE_IMAGE_PULL_DENIED, reasons.DOCKERFILE_ERROR,
                                                     reasons.BUILD_FAILED):
        return state
    log = state.log_excerpt
    if f"generating sbom using {generator}" in log:
        summary = f"the SBOM generator {generator} failed"
    elif f"failed to resolve source metadata for {generator}" in log or re.search(
            rf"resolve image config for docker-image://(docker\.io/)?{re.escape(generator)}", log):
        summary = (f"the SBOM generator image {generator} could not be pulled: name one the cluster reaches in "
                   "spec.attestations.sbom.generator, or the operator's KILN_SBOM_GENERATOR")
    else:
        return state
    return dataclasses.replace(state, reason=reasons.SBOM_GENERATOR_FAILED, message=summary, retryable=False)


def cache_stats(log: str) -> tuple[int, int]:
    """(steps taken from the cache, Dockerfile steps in all), from buildctl's plain progress output."""
    steps = set(_STEP.findall(log))
    return len(steps & (set(_CACHED.findall(log)) | set(_LOADED.findall(log)))), len(steps)


def true_condition(obj: dict, kind: str) -> dict | None:
    """The condition of this type if its status is True (Jobs, Pods and Nodes all report this way)."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind and c.get("status") == "True"), None)


def _container(pod: dict | None) -> dict:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == "buildkit"), statuses[0] if statuses else {})


def ran(pod: dict | None) -> bool:
    """Whether the pod's build container ran and ended: then it has a log worth keeping."""
    return bool((_container(pod).get("state") or {}).get("terminated"))


def _metadata(message: str) -> tuple[str | None, str | None]:
    """(digest, media type) from buildctl's metadata file, as the kubelet passed it on.

    Read by pattern, not parsed: the kubelet cuts a termination message at 4 KiB, and buildctl
    writes its keys in sorted order, so the digest and the descriptor come before the long
    image.name list and survive the cut.
    """
    digest = _DIGEST.search(message)
    media_type = _MEDIA_TYPE.search(message)
    return (digest.group(1) if digest else None), (media_type.group(1) if media_type else None)


def _ready(pod: dict | None) -> bool | None:
    """The pod's Ready condition. The build container has no readiness probe, so a running pod turns not Ready
    only when the node controller marks it so: its node stopped reporting."""
    condition = next((c for c in ((pod or {}).get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                     None)
    return None if condition is None else condition.get("status") == "True"


def _unschedulable(pod: dict | None) -> str | None:
    """The scheduler's word on a pod no node fits (none while it has simply not been placed yet)."""
    condition = next((c for c in ((pod or {}).get("status") or {}).get("conditions") or []
                      if c.get("type") == "PodScheduled"), {})
    if condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
        return condition.get("message") or "no node fits"
    return None


def _disrupted(pod: dict) -> bool:
    return (pod.get("status") or {}).get("reason") == "Evicted" or true_condition(pod, "DisruptionTarget") is not None


def _ending(pod: dict | None) -> bool:
    """A pod last seen before its end although its Job has concluded: Jobs and Pods come on separate watch
    streams, so the pod's final state (digest, log, exit code) is on its way; decide nothing without it."""
    return (pod is not None and not (_container(pod).get("state") or {}).get("terminated")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not _disrupted(pod))


def observe_unit(job: dict | None, pod: dict | None) -> UnitState:
    """A unit's state from its Job and its newest Pod. The unit's start is when kiln created its Job (in its
    record), so the Job controller's own startTime, a moment later, costs no status write."""
    if job is None:
        return UnitState(PENDING, reasons.BUILD_PENDING, "the build Job is not created yet")
    times = {"completion_time": (job.get("status") or {}).get("completionTime")}
    state = _container(pod).get("state") or {}
    terminated = state.get("terminated") or {}
    failed = true_condition(job, "Failed")
    deadline = failed is not None and failed.get("reason") == "DeadlineExceeded"
    if (true_condition(job, "Complete") or (failed and not deadline)) and _ending(pod):
        return UnitState(RUNNING, reasons.BUILDING, "building")
    if true_condition(job, "Complete"):
        digest, media_type = _metadata(terminated.get("message", ""))
        return UnitState(SUCCEEDED, reasons.SUCCEEDED, "the image was built", digest=digest, media_type=media_type, **times)
    waiting = state.get("waiting") or {}
    if failed is None and waiting.get("reason") in _PULL_FAILURES:
        return UnitState(FAILED, reasons.BUILDER_IMAGE_PULL_FAILED,
                         f"the BuildKit image could not be pulled ({waiting['reason']}: {waiting.get('message', '')})",
                         retryable=waiting["reason"] != "InvalidImageName", **times)
    if failed is None:
        if state.get("running") and _ready(pod) is False:  # no readiness probe: its node stopped reporting
            return UnitState(RUNNING, reasons.BUILDING, NODE_NOT_READY)
        if state.get("running") or terminated:  # a pod that ended is still building until its Job concludes
            return UnitState(RUNNING, reasons.BUILDING, "building")
        if waiting.get("reason") in (BUILDER_STARTING, BUILDER_UNREACHABLE):
            return UnitState(PENDING, reasons.BUILD_PENDING, waiting.get("message", "")[:400])
        unschedulable = _unschedulable(pod)
        if unschedulable:
            return UnitState(PENDING, reasons.BUILD_PENDING, f"{WAITING_FOR_NODE}: {unschedulable[:300]}")
        return UnitState(PENDING, reasons.BUILD_PENDING, WAITING_FOR_POD)
    completion = {"completion_time": times["completion_time"] or failed.get("lastTransitionTime")}
    log = terminated.get("message", "")
    if deadline:
        return UnitState(FAILED, reasons.TIMED_OUT, "the build ran longer than spec.timeout",
                         log_excerpt=excerpt(log), **completion)
    if terminated.get("reason") == "OOMKilled":
        return UnitState(FAILED, reasons.OUT_OF_MEMORY, "the build ran out of memory; raise spec.builder.resources.limits.memory",
                         log_excerpt=excerpt(log), **completion)
    pod_status = (pod or {}).get("status") or {}
    # Exit 143: the build script stopped the build on SIGTERM (a pod deleted by hand, a node drained), whether
    # kiln saw that end or only the pod gone afterwards.
    if pod is None or _disrupted(pod) or terminated.get("exitCode") == STOPPED_EXIT_CODE:
        detail = pod_status.get("message") or ("it was asked to stop (deleted, or its node drained)" if pod
                                               else "its node was lost or it was evicted")
        return UnitState(FAILED, reasons.EVICTED, f"the build pod was stopped before it finished: {detail}",
                         retryable=True, **completion)
    reason, retryable, summary = classify_failure(log)
    return UnitState(FAILED, reason, summary, retryable=retryable, log_excerpt=excerpt(log), **completion)
