"""kmock, made to behave like a real API server where kiln depends on it, plus the Job controller's part.

kmock stores and streams objects but sets no uid, resourceVersion or generation,
merges every patch (status included) into the object, keeps fields no schema
declares, and collects no garbage. KubeFake adds what a real server does: uid,
creationTimestamp, resourceVersion on every write, generation bumped on spec
changes, `status` ignored in main-resource patches and only `status` taken from
/status patches (for resources with a status subresource), pruning of fields
kiln's CRDs do not declare, and background deletion of dependents by owner reference.
The tests play the Job controller and the kubelet through the same HTTP API.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import uuid

import attrs
import kmock
import kopf.testing
import kubernetes_validate
from cluster.versions import KUBERNETES_MINOR

from kiln.cli import kopf_argv

from crdcheck import pruned, schema_of

WITH_STATUS = {"imagebuilds", "registrylogins", "jobs", "pods"}
VALIDATED = {"jobs", "secrets", "configmaps", "events"}
CRDS = {
    "kiln.dev/v1alpha1/imagebuilds": {"kind": "ImageBuild", "singular": "imagebuild", "shortnames": ["ib"]},
    "kiln.dev/v1alpha1/registrylogins": {"kind": "RegistryLogin", "singular": "registrylogin", "shortnames": ["rl"]},
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_versions = itertools.count(1000)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class KubeFake(kmock.KubernetesEmulator):
    # Requests to fail on purpose: [method, path fragment, status, how many more times, how many to let pass first].
    faults: list = attrs.field(factory=list)
    reads: list = attrs.field(factory=list)  # the URL of every GET: lists and watches with their selectors
    # What a created object is validated against Kubernetes' schemas for, and whether owners' deletion is followed
    # (benchmarks turn both off: their cost is the emulator's, not kiln's).
    validated: frozenset = frozenset(VALIDATED)
    collects_garbage: bool = True

    def fail(self, method: str, fragment: str, status: int = 500, times: int = 1, after: int = 0) -> None:
        """Of the requests whose path contains `fragment`, let `after` pass, then fail `times` with `status`."""
        self.faults.append([method.upper(), fragment, status, times, after])

    async def _handle(self, request):
        if str(request.method).upper().endswith("GET"):
            self.reads.append(request.url)
        for fault in self.faults:
            if fault[3] > 0 and str(request.method).upper().endswith(fault[0]) and fault[1] in request.url.path:
                if fault[4] > 0:
                    fault[4] -= 1
                    continue
                fault[3] -= 1
                raise kmock.KubernetesError(status=fault[2], reason="InternalError", message="injected by the test")
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            if isinstance(request.data, dict):
                real = self._as_real_server(request)
                request.data.clear()  # the parsed body is what kmock stores; the request object itself is frozen
                request.data.update(real)
            elif isinstance(request.data, list):
                self._check_json_patch(request)
        response = await super()._handle(request)
        if self.collects_garbage and request.resource is not None and request.action in (kmock.action.DELETE,
                                                                                          kmock.action.CREATE):
            await self._collect_garbage()  # a child created for an owner that is already gone is collected too
        return response

    def _check_json_patch(self, request) -> None:
        """A failed `test` op is 422 on a real server (kopf then retries later); every write bumps resourceVersion."""
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else {}
        version = (current.get("metadata") or {}).get("resourceVersion")
        for op in request.data:
            if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion" and op.get("value") != version:
                raise kmock.KubernetesError(status=422, reason="Invalid", message="the object has been modified")
        request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": str(next(_versions))})

    def _as_real_server(self, request) -> dict:
        data = json.loads(json.dumps(request.data))
        meta = data.setdefault("metadata", {})
        plural = request.resource.plural
        if request.action == kmock.action.CREATE:
            if plural in WITH_STATUS:
                data.pop("status", None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        else:
            key = (request.resource, request.namespace, request.name)
            current = self.objects[key].raw if key in self.objects and not self.objects[key].deleted else {}
            if request.subresource == "status":
                data = {"status": data.get("status"), "metadata": {}}
                meta = data["metadata"]
            elif plural in WITH_STATUS:
                data.pop("status", None)
            if "spec" in data and _merged(current.get("spec") or {}, data["spec"]) != (current.get("spec") or {}):
                meta["generation"] = (current.get("metadata") or {}).get("generation", 1) + 1
        meta["resourceVersion"] = str(next(_versions))
        if request.action == kmock.action.CREATE and plural in self.validated:
            try:  # what the operator creates must be what a real API server accepts
                kubernetes_validate.validate(data, KUBERNETES_MINOR, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        if request.resource.group == "kiln.dev":  # structural schemas: unknown fields are dropped, not stored
            data = pruned(schema_of(CRDS[_resource_id(request.resource)]["kind"]), data)
        return data

    async def _collect_garbage(self) -> None:
        """Delete every object whose owner is gone, as the garbage collector does (background propagation).

        Owners are known only by the objects stored here: tests create owners before their children.
        """
        async with self._lock:
            while True:
                live = {obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted}
                orphans = [(key, obj) for key, obj in self.objects.items() if not obj.deleted and any(
                    ref.get("uid") not in live for ref in obj.raw["metadata"].get("ownerReferences") or [])]
                if not orphans:
                    return
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})


def _merged(base, patch):
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(base.get(key), value)
    return out


def declare_resources(fake: KubeFake) -> None:
    fake.resources.load_bundled()
    for key, info in CRDS.items():
        fake.resources[key] = {"namespaced": True, "verbs": VERBS, "subresources": ["status"], "categories": ["kiln"], **info}


def kubeconfig(fake: KubeFake, path) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(fake.url)}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-test-token"}}],
    }))
    return str(path)


def url(api_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base, *([f"namespaces/{namespace}"] if namespace else []), plural, *([name] if name else []),
             *([sub] if sub else [])]
    return "/".join(parts)


class Cluster:
    """The test's hands on the fake cluster: kubectl, the Job controller and the kubelet."""

    def __init__(self, fake: KubeFake, namespace: str = "default"):
        self.fake, self.namespace = fake, namespace

    async def _call(self, method: str, path: str, body=None) -> dict:
        async with self.fake.request(method, path, json=body) as response:
            data = await response.json()
            assert response.status < 400, (method, path, response.status, data)
            return data

    async def apply(self, obj: dict) -> dict:
        api_version, plural = obj["apiVersion"], _plural(obj["kind"])
        namespace = obj["metadata"].setdefault("namespace", self.namespace)
        existing = self.get(api_version, plural, obj["metadata"]["name"], namespace)
        if existing is None:
            return await self._call("POST", url(api_version, plural, namespace), obj)
        return await self._call("PATCH", url(api_version, plural, namespace, obj["metadata"]["name"]), obj)

    async def patch(self, api_version: str, plural: str, name: str, patch: dict, sub: str | None = None) -> dict:
        return await self._call("PATCH", url(api_version, plural, self.namespace, name, sub), patch)

    async def delete(self, api_version: str, plural: str, name: str) -> None:
        await self._call("DELETE", url(api_version, plural, self.namespace, name))

    def _stored(self, api_version: str, plural: str, namespace: str | None = None):
        wanted = f"{api_version}/{plural}"
        for (resource, ns, name), obj in self.fake.objects.items():
            if _resource_id(resource) == wanted and ns == (namespace or self.namespace):
                yield name, obj

    def get(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> dict | None:
        found = [obj for obj_name, obj in self._stored(api_version, plural, namespace) if obj_name == name and not obj.deleted]
        return json.loads(json.dumps(found[0].raw)) if found else None

    def all(self, api_version: str, plural: str) -> list[dict]:
        return [json.loads(json.dumps(obj.raw)) for _, obj in self._stored(api_version, plural) if not obj.deleted]

    def ever_created(self, api_version: str, plural: str) -> list[str]:
        """Names of every object of a kind created here, deleted ones too (for "created only once" checks)."""
        return [name for name, _ in self._stored(api_version, plural)]

    def build(self, name: str) -> dict:
        return self.get("kiln.dev/v1alpha1", "imagebuilds", name)

    def jobs(self) -> list[dict]:
        return self.all("batch/v1", "jobs")

    def events(self) -> list[dict]:
        return self.all("v1", "events")

    # -- the Job controller and the kubelet --

    async def start_pod(self, job: dict, name_suffix: str = "abcde") -> dict:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{name_suffix}"
        labels = {**template["metadata"].get("labels", {}), "job-name": job["metadata"]["name"],
                  "batch.kubernetes.io/job-name": job["metadata"]["name"], "controller-uid": job["metadata"]["uid"]}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                            "annotations": template["metadata"].get("annotations", {}),
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": template["spec"]}
        await self._call("POST", url("v1", "pods", self.namespace), pod)
        await self.patch("batch/v1", "jobs", job["metadata"]["name"], {"status": {"startTime": now(), "active": 1}}, "status")
        await self.patch("v1", "pods", name, {"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"}]}}, "status")
        return self.get("v1", "pods", name)

    async def run_pod(self, pod: dict) -> None:
        await self.patch("v1", "pods", pod["metadata"]["name"], {"status": {"phase": "Running", "containerStatuses": [
            {"name": "buildkit", "ready": True, "state": {"running": {"startedAt": now()}}}]}}, "status")

    async def pull_fails(self, pod: dict, reason: str = "ImagePullBackOff") -> None:
        await self.patch("v1", "pods", pod["metadata"]["name"], {"status": {"phase": "Pending", "containerStatuses": [
            {"name": "buildkit", "ready": False, "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]}},
                         "status")

    async def finish(self, job: dict, pod: dict | None, *, exit_code: int, message: str = "", reason: str = "",
                     job_reason: str = "", pod_status: dict | None = None) -> None:
        """The container ends; the Job controller marks the Job Complete or Failed."""
        if pod is not None:
            terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                          "message": message, "finishedAt": now()}
            status = {"phase": "Succeeded" if exit_code == 0 else "Failed",
                      "containerStatuses": [{"name": "buildkit", "ready": False, "state": {"terminated": terminated}}],
                      **(pod_status or {})}
            await self.patch("v1", "pods", pod["metadata"]["name"], {"status": status}, "status")
        kind = "Complete" if exit_code == 0 and not job_reason else "Failed"
        conditions = [{"type": kind, "status": "True", "reason": job_reason or None, "lastTransitionTime": now()}]
        counts = {"succeeded": 1} if kind == "Complete" else {"failed": 1}
        await self.patch("batch/v1", "jobs", job["metadata"]["name"],
                         {"status": {"conditions": conditions, "completionTime": now() if kind == "Complete" else None,
                                     "active": None, **counts}}, "status")


def _resource_id(resource) -> str:
    return f"{resource.group + '/' if resource.group else ''}{resource.version}/{resource.plural}"


def _plural(kind: str) -> str:
    return {"ImageBuild": "imagebuilds", "RegistryLogin": "registrylogins", "Secret": "secrets",
            "ConfigMap": "configmaps", "Node": "nodes", "PersistentVolumeClaim": "persistentvolumeclaims",
            "Pod": "pods"}[kind]


async def eventually(check, timeout: float = 15.0, interval: float = 0.1, message: str = ""):
    """Wait until check() returns something truthy (the operator works in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting: {message or check}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def operator(*extra: str):
    """The real kopf operator with kiln's handlers, started with kiln run's arguments, in a thread."""
    runner = kopf.testing.KopfRunner(kopf_argv(["--standalone", "--verbose", *extra]), timeout=30)
    await asyncio.to_thread(runner.__enter__)
    try:
        yield runner
    finally:
        # Stop off the event loop: kmock must keep serving while kopf shuts down.
        await asyncio.to_thread(runner.__exit__, None, None, None)

