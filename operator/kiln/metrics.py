"""Prometheus metrics of the operator (prometheus-client), served on KILN_METRICS_PORT (0: off).

Names follow Prometheus conventions (kiln_ prefix, _total counters, _seconds histograms);
labels stay few and bounded: no namespace or object names, whose count users control.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BUILDS_STARTED = Counter("kiln_builds_started_total", "Builds started (one per build ID and attempt of its plan).")
BUILDS_SUCCEEDED = Counter("kiln_builds_succeeded_total", "Builds that pushed their image.")
BUILDS_FAILED = Counter("kiln_builds_failed_total", "Builds that failed, by reason.", ["reason"])
BUILD_DURATION = Histogram("kiln_build_duration_seconds", "From the first pod's start to the result, by cache type, "
                           "multi-arch strategy and result.", ["cache", "strategy", "result"],
                           buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
BUILDS_RUNNING = Gauge("kiln_builds_running", "ImageBuilds whose build is Pending or Building, as of the last resync.")
BUILDS_QUEUED = Gauge("kiln_builds_queued", "ImageBuilds waiting their turn (KILN_MAX_BUILDS_PER_NAMESPACE), as of the "
                      "last resync.")
RECONCILES = Gauge("kiln_reconciles_in_progress", "ImageBuild reconciles running now (at most "
                   "KILN_MAX_CONCURRENT_RECONCILES).")
CACHE_STEPS = Counter("kiln_cache_steps_total", "Dockerfile steps of finished builds, by whether a cache gave them.",
                      ["cached"])
VERIFICATIONS = Counter("kiln_registry_verifications_total", "RegistryLogin checks against their registry, by result.",
                        ["result"])
RECONCILE_ERRORS = Counter("kiln_reconcile_errors_total", "Reconciles that failed and are tried again, by kind.", ["kind"])
API_REQUESTS = Counter("kiln_api_requests_total", "Requests the operator made to the Kubernetes API, by method.",
                       ["method"])


def serve(port: int, address: str):
    """Serve /metrics on address:port; the server, to shut down, or None."""
    return start_http_server(port, address)[0] if port else None


def build_finished(status: dict, cache: str, strategy: str) -> None:
    """Count a build that reached Succeeded or Failed (called once, when its status first says so)."""
    phase = status.get("phase")
    result = "succeeded" if phase == "Succeeded" else "failed"
    if phase == "Succeeded":
        BUILDS_SUCCEEDED.inc()
    else:
        BUILDS_FAILED.labels((status.get("failure") or {}).get("reason") or "Unknown").inc()
    seconds = _seconds(status.get("duration"))
    if seconds is not None:
        BUILD_DURATION.labels(cache, strategy, result).observe(seconds)
    cache_stats = status.get("cache") or {}
    if cache_stats.get("totalSteps"):
        CACHE_STEPS.labels("true").inc(cache_stats.get("cachedSteps", 0))
        CACHE_STEPS.labels("false").inc(cache_stats["totalSteps"] - cache_stats.get("cachedSteps", 0))


def _seconds(duration: str | None) -> float | None:
    """'1h2m3s' (status.duration) -> seconds."""
    if not duration:
        return None
    total, number = 0, ""
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total += int(number or 0) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return float(total)
