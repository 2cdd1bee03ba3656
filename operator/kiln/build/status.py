"""status: the ImageBuild's status as decide makes it, with conditions in the API conventions and kstatus (pure).

Ready is the summary `kubectl wait --for=condition=Ready` and Argo CD read;
Reconciling is True while kiln works toward the spec; Stalled is True when it
cannot get there without a change from the user.
"""
from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass

from kiln.build.platforms import BuildUnit
from kiln.build.render import cache_ref
from kiln.spec import reasons
from kiln.spec.parse import BuildSpec


class Phase(enum.StrEnum):
    """An ImageBuild's status.phase."""
    PENDING = "Pending"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


PENDING, BUILDING, SUCCEEDED, FAILED, CANCELLED = Phase.PENDING, Phase.BUILDING, Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED
DEFAULT_HISTORY_LIMIT = 5  # spec.historyLimit's default, for a spec too broken to read one from


def condition(kind: str, status: bool, reason: str, message: str, generation: int) -> dict:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "observedGeneration": generation}


def with_transition_times(old: list[dict] | None, new: list[dict], now: str) -> list[dict]:
    """new conditions, keeping lastTransitionTime where status did not change; others' conditions are kept."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for item in new:
        before = previous.get(item["type"])
        changed = before is None or before.get("status") != item["status"]
        out.append({**item, "lastTransitionTime": now if changed else before.get("lastTransitionTime", now)})
    ours = {c["type"] for c in new}
    return out + [c for c in old or [] if c.get("type") not in ours]


def status_patch(old: dict | None, new: dict, now: str) -> dict | None:
    """The merge patch that turns status `old` into `new` (None if nothing changed, so nothing is written).

    lastTransitionTime is kept where a condition's status did not change; keys `new` lacks are removed.
    """
    old = old or {}
    new = {**new, "conditions": with_transition_times(old.get("conditions"), new["conditions"], now)}
    patch = {**{k: None for k in old if k not in new}, **new}
    return None if all(old.get(k) == v for k, v in patch.items()) else patch


def phase_conditions(phase: str, reason: str, message: str, generation: int) -> list[dict]:
    """Ready / Reconciling / Stalled for a build phase."""
    working = phase in (PENDING, BUILDING)
    return [
        condition("Ready", phase == SUCCEEDED, reason, message, generation),
        condition("Reconciling", working, reason if working else reasons.SUCCEEDED if phase == SUCCEEDED else reason,
                  message if working else "", generation),
        condition("Stalled", phase == FAILED, reason if phase == FAILED else reasons.BUILDING if working else reason,
                  message if phase == FAILED else "", generation),
    ]


def duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    seconds = int((_parse(end) - _parse(start)).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{seconds}s"


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def short_digest(digest: str | None) -> str | None:
    return digest.split(":", 1)[-1][:12] if digest else None


def with_history(history: list[dict] | None, record: dict, limit: int) -> list[dict]:
    """The build record first, once, then older ones, at most `limit`."""
    older = [item for item in history or [] if item.get("buildID") != record["buildID"]]
    return [record, *older][:limit]


def build_record(status: dict, phase: str, reason: str, now: str) -> dict:
    logs = [unit["log"] for unit in status.get("units") or [] if unit.get("log")]
    record = {"buildID": status.get("buildID"), "generation": status.get("observedGeneration"),
              "jobName": status.get("jobName"), "phase": phase, "reason": reason, "digest": status.get("digest"),
              "startTime": status.get("startTime"), "completionTime": status.get("completionTime") or now,
              "logs": logs or None}
    return {k: v for k, v in record.items() if v is not None}


def logs_command(spec: BuildSpec) -> str:
    """What prints the whole log of the current build, its pods gone or not."""
    return f"kiln logs {spec.name} -n {spec.namespace} --build {spec.build_id}"


@dataclass(frozen=True)
class BuildStatus:
    """Builds the status dict of the current build: from its spec, the status carried over from the same
    build (empty for a new one), and the history so far."""
    spec: BuildSpec
    generation: int
    carried: dict
    history: list[dict]

    def _base(self, phase: str, reason: str, message: str, credentials: dict) -> dict:
        spec = self.spec
        cache = {"type": spec.cache.type}
        export = cache_ref(spec, BuildUnit(spec.platforms)) if spec.cache.type == "registry" else None
        if export:
            cache["exportRef"] = export
        imports = [*([export] if export else []), *spec.cache.import_refs]
        if imports:
            cache["importRefs"] = imports
        status = {"observedGeneration": self.generation, "specIdentity": spec.identity, "buildID": spec.build_id,
                  "phase": phase, "cache": cache, "history": self.history,
                  "conditions": [*phase_conditions(phase, reason, message, self.generation), credentials]}
        for key in ("startTime", "jobName", "attempt", "units"):
            if key in self.carried:
                status[key] = self.carried[key]
        return status

    def _credentials_ok(self) -> dict:
        return condition("CredentialsReady", True, reasons.CREDENTIALS_RESOLVED,
                         "every RegistryLogin the build uses is Ready", self.generation)

    def keep(self) -> dict:
        """The finished build's status, seen at this generation (a change that does not alter the image)."""
        conditions = [{**c, "observedGeneration": self.generation} for c in self.carried.get("conditions", [])]
        return {**self.carried, "observedGeneration": self.generation, "history": self.history, "conditions": conditions}

    def make(self, phase: str, reason: str, message: str, *, attempt: int | None = None,
             job_names: list[str] | None = None) -> dict:
        status = self._base(phase, reason, message, self._credentials_ok())
        if phase == CANCELLED:
            status["conditions"][-1] = condition("CredentialsReady", True, reasons.SUSPENDED, "not needed while suspended",
                                                 self.generation)
        if attempt is not None:
            status["attempt"] = attempt
        if job_names:
            status["jobName"] = ",".join(job_names)
        return status

    def blocked(self, reason: str, message: str, *, credentials: bool, stalled: bool) -> dict:
        """Pending: the build cannot start (credentials, push access, a busy cache volume, a refused child)."""
        status = self._base(PENDING, reason, message, self._credentials_ok())
        ready, _, _, credentials_condition = status["conditions"]
        if credentials:
            credentials_condition = condition("CredentialsReady", False, reason, message, self.generation)
        stalled_condition = condition("Stalled", stalled, reason, message if stalled else "", self.generation)
        reconciling = condition("Reconciling", not stalled, reason, "" if stalled else message, self.generation)
        status["conditions"] = [ready, reconciling, stalled_condition, credentials_condition]
        return status

    def never_started(self, reason: str, message: str, now: str) -> dict:
        """Failed before any pod ran: there is no log to point at."""
        status = self.make(FAILED, reason, message)
        status["completionTime"] = now
        status["failure"] = {"reason": reason, "message": message}
        status["history"] = with_history(self.history, build_record(status, FAILED, reason, now), self.spec.history_limit)
        return status

    def failed(self, reason: str, message: str, log_excerpt: str, job_names: list[str], attempt: int,
               completion: str, now: str) -> dict:
        command = logs_command(self.spec)
        status = self.make(FAILED, reason, f"{message}. See the build log: {command}", attempt=attempt, job_names=job_names)
        status["completionTime"] = completion
        status["duration"] = duration(status.get("startTime"), completion)
        status["failure"] = {"reason": reason, "message": message, "logExcerpt": log_excerpt, "logsCommand": command}
        status["history"] = with_history(self.history, build_record(status, FAILED, reason, now), self.spec.history_limit)
        return {k: v for k, v in status.items() if v is not None}

    def succeeded(self, job_names: list[str], attempt: int, completion: str, digest: str | None, platforms: list[dict],
                  cached: int, total: int, now: str) -> dict:
        status = self.make(SUCCEEDED, reasons.SUCCEEDED, "", attempt=attempt, job_names=job_names)
        status["completionTime"] = completion
        status["duration"] = duration(status.get("startTime"), completion)
        if digest:
            status.update(digest=digest, shortDigest=short_digest(digest))
            if self.spec.output.push:
                status["image"] = f"{self.spec.output.image}@{digest}"
        message = f"pushed {status['image']}" if "image" in status else "built (spec.output.push is false)"
        status["conditions"][0]["message"] = message
        if platforms:
            status["platforms"] = platforms
        if total:
            status["cache"].update(cachedSteps=cached, totalSteps=total)
        status["history"] = with_history(self.history, build_record(status, SUCCEEDED, reasons.SUCCEEDED, now),
                                         self.spec.history_limit)
        return {k: v for k, v in status.items() if v is not None}


def unsigned(status: dict, spec: BuildSpec, reason: str, message: str, now: str) -> dict:
    """A succeeded build's status turned Failed for `reason` (its signature): digest, image and platforms stay."""
    generation = status["observedGeneration"]
    credentials = status["conditions"][-1]
    status = {**status, "phase": FAILED, "failure": {"reason": reason, "message": message},
              "conditions": [*phase_conditions(FAILED, reason, message, generation), credentials]}
    history = [item for item in status["history"] if item.get("buildID") != status.get("buildID")]
    status["history"] = with_history(history, build_record(status, FAILED, reason, now), spec.history_limit)
    return status


def invalid_build_status(generation: int, identity: str, message: str, history: list[dict] | None) -> dict:
    """Status for a spec kiln cannot act on at all. Its identity settles it: nothing but an edit (or a new
    rebuild token) gives it work again, so the resync, logins, Jobs and Pods leave it alone."""
    reason = reasons.INVALID_SPEC
    conditions = [*phase_conditions(FAILED, reason, message, generation),
                  condition("CredentialsReady", False, reason, "not resolved: the spec is invalid", generation)]
    return {"observedGeneration": generation, "specIdentity": identity, "phase": FAILED, "history": history or [],
            "conditions": conditions}
