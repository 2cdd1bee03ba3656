"""status: conditions in the Kubernetes API conventions and kstatus (pure).

Ready is the summary `kubectl wait --for=condition=Ready` and Argo CD read;
Reconciling is True while kiln works toward the spec; Stalled is True when it
cannot get there without a change from the user.
"""
from __future__ import annotations

import datetime

from kiln import reasons

PENDING, BUILDING, SUCCEEDED, FAILED, CANCELLED = "Pending", "Building", "Succeeded", "Failed", "Cancelled"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
