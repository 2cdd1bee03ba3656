"""carry_out: a Decision's deletes and creates, in its order, through the Kubernetes API."""
from __future__ import annotations

from kiln.build.decide import Decision
from kiln.build.logs import LOG_LABEL
from kiln.build.render import build_secret_name, short_name
from kiln.clients.kube import KubeError, path
from kiln.controller.runtime import Runtime
from kiln.spec import labels

_PLURALS = {"Secret": "secrets", "Job": "jobs"}


async def carry_out(runtime: Runtime, namespace: str, build: str, decision: Decision,
                    children: list[dict]) -> tuple[str, str] | None:
    """Delete what the decision says, then create its children (rendered), in order. A create the API server
    refuses is returned as (object, message); transient API errors raise, and the caller tries again later."""
    kube = runtime.kube
    for name in decision.delete_jobs:
        if runtime.runs.cancel(namespace, name):  # a build on a warm builder: stopped there
            continue
        await kube.delete(path("batch/v1", "jobs", namespace, name))
        runtime.cache.deleted(namespace, name)
    for build_id in decision.delete_credentials:
        name = build_secret_name(build, build_id)
        await kube.delete(path("v1", "secrets", namespace, name))
        runtime.cache.deleted_secret(namespace, name)
    for build_id in decision.delete_logs:
        found = await kube.list(path("v1", "configmaps", namespace),
                                {labels.IMAGEBUILD: short_name(build), labels.BUILD_ID: build_id})
        for log in found:
            if LOG_LABEL in (log["metadata"].get("labels") or {}):
                await kube.delete(path("v1", "configmaps", namespace, log["metadata"]["name"]))
    for child in children:
        try:
            collection = path(child["apiVersion"], _PLURALS[child["kind"]], namespace)
            if not await kube.create(collection, child) and child["kind"] == "Secret":
                # Made before (by a retry's first attempt, or before a crash): made again with what the logins
                # hold now, as a password rotated since must reach the new pod.
                await kube.delete(path("v1", "secrets", namespace, child["metadata"]["name"]))
                await kube.create(collection, child)
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
