"""Real builds, apply to Ready, side by side in one run on the local cluster (`make bench-builds`, part of
`make bench`): a pod per build, a warm builder, and raw buildctl against that builder's own daemon, the floor.

The build is the issue's: FROM a private base in registry A, pushed to registry B (private CA, Bearer), registry
cache in B, one platform, from a private git repository. Each mode builds it cold, unchanged, and with one file
changed (a new commit). kiln's figures run from the write (kubectl apply, or the rebuild annotation) to the status
that says Ready for that build; raw buildctl's, from its start to its end, with kiln's own arguments for the build
(build/builders.py), its client certificates and the same registries. Not collected by `make e2e` (its name is
not test_*): it measures, it does not test. The figures go to build/bench-builds.json and a table on stdout.
"""
from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import kubernetes

from kiln.build.builders import CLIENT_FILES, client_args, client_files
from kiln.build.credentials import Credentials, ResolvedLogin
from kiln.build.platforms import BuildUnit
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

from gitserver import commit_change, make_repository
from harness import GIT_TOKEN, ROOT, build_secret, image_build, registry_login

GROUP = ("kiln.dev", "v1alpha1")
DOCKERFILE = "FROM {base}\nRUN echo built > /built\nCOPY app.txt /app.txt\n"
RUNS = int(os.environ.get("KILN_BENCH_RUNS", "3"))  # of the unchanged and one-file rows; the median is the figure
GOALS = "unchanged rebuild on a warm builder: Ready within 1 s and 3x raw; one file changed: 2x raw; cold: 1.5x raw + daemon start"


def _api(kubectl) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(kubectl.kubeconfig)))


def _ready_after(api, namespace: str, name: str, before: str | None, started: float) -> float:
    """Seconds from started until the ImageBuild reports Ready for a build other than `before`."""
    while True:
        status = api.get_namespaced_custom_object(*GROUP, namespace, "imagebuilds", name).get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if status.get("buildID") not in (None, before) and ready.get("status") == "True":
            return time.monotonic() - started
        if status.get("phase") == "Failed":
            raise AssertionError(f"{name} failed: {json.dumps(status)[:2000]}")
        if time.monotonic() - started > 600:
            raise AssertionError(f"{name} not Ready after 600 s: {json.dumps(status)[:2000]}")
        time.sleep(0.02)


class Kiln:
    """One ImageBuild of the story, pod per build or warm."""

    def __init__(self, kubectl, api, namespace: str, name: str, spec: dict):
        self.kubectl, self.api, self.namespace, self.name, self.spec, self.rebuilds = kubectl, api, namespace, name, spec, 0

    def _build_id(self) -> str | None:
        return (self.api.get_namespaced_custom_object(*GROUP, self.namespace, "imagebuilds", self.name).get("status") or {}).get("buildID")

    def cold(self) -> float:
        started = time.monotonic()
        self.kubectl.apply(image_build(self.name, **self.spec), namespace=self.namespace)
        return _ready_after(self.api, self.namespace, self.name, None, started)

    def again(self) -> float:
        before = self._build_id()
        self.rebuilds += 1
        started = time.monotonic()
        self.api.patch_namespaced_custom_object(*GROUP, self.namespace, "imagebuilds", self.name, {"metadata": {"annotations": {
            "kiln.dev/rebuild": str(self.rebuilds)}}})
        return _ready_after(self.api, self.namespace, self.name, before, started)


class Raw:
    """buildctl on this machine against the warm builder's daemon, with kiln's arguments for the same build."""

    def __init__(self, kubectl, namespace: str, obj: dict, logins: list[ResolvedLogin], secrets: dict):
        self.kubectl, self.namespace, self.logins, self.secrets = kubectl, namespace, logins, secrets
        self.spec = parse_image_build({**obj, "metadata": {**obj["metadata"], "namespace": namespace, "uid": "raw"}})
        (secret,) = kubectl.items("secrets", namespace, "app.kubernetes.io/component=builder")
        self.builder = secret["metadata"]["name"]
        self.tls = {key: base64.b64decode(secret["data"][key]).decode() for key in CLIENT_FILES}

    def _address(self) -> str:
        pods = [p for p in self.kubectl.items("pods", self.namespace, f"kiln.dev/builder={self.builder}")
                if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")]
        return f"{pods[0]['status']['podIP']}:1234"

    def build(self) -> float:
        address = self._address()
        with tempfile.TemporaryDirectory(prefix="kiln-bench-") as root:
            for relative, content in client_files(self.spec, self.logins, self.tls, self.secrets, None).items():
                (Path(root) / relative).parent.mkdir(parents=True, exist_ok=True)
                (Path(root) / relative).write_bytes(content)
            (Path(root) / "out").mkdir()
            args = client_args(self.spec, BuildUnit(self.spec.platforms), self.logins, Settings(), address=address,
                               kind=self.builder, root=root)
            started = time.monotonic()
            result = subprocess.run(["buildctl", *args], capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "DOCKER_CONFIG": f"{root}/docker"})
            took = time.monotonic() - started
        assert result.returncode == 0, result.stderr[-3000:]
        return took

    def prune(self) -> None:
        """A fresh daemon state, as a builder that scaled to zero has: only the registry cache is left."""
        self.kubectl("exec", f"deployment/{self.builder}", f"--namespace={self.namespace}", "--", "buildctl",
                     "--addr=unix:///run/user/1000/buildkit/buildkitd.sock", "prune", "--all", timeout=300)


def test_real_builds_side_by_side(kubectl, lab, namespace):
    api = _api(kubectl)
    repository = lab.repositories / namespace
    files = {"Dockerfile": DOCKERFILE.format(base=lab.base_image), "app.txt": "0\n"}
    make_repository(repository, files)
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  build_secret("git-token", "x-access-token", GIT_TOKEN), namespace=namespace)
    source = {"git": {"url": lab.git.url.replace("/app.git", f"/{namespace}/app.git"), "revision": "main",
                      "secretRef": {"name": "git-token"}}}

    def spec(image: str, warm: bool) -> dict:
        return {"source": source, "platforms": ["linux/amd64"], "output": {"image": f"{lab.b.host}/bench/{image}",
                                                                         "tags": ["v1"]},
                "builder": {"warm": warm}}

    changes = iter(range(1, 1000))

    def one_file_changed(run) -> float:
        commit_change(repository, {"app.txt": f"{next(changes)}\n"})
        return run()

    logins = [ResolvedLogin("account-a", lab.a.host, Credentials("alice", lab.a.users["alice"]), insecure=True),
              ResolvedLogin("account-b", lab.b.host, Credentials("carol", lab.b.users["carol"]), ca_pem=lab.b.ca_pem)]
    secrets = {"git-token": {"data": {"password": base64.b64encode(GIT_TOKEN.encode()).decode()}}}
    rows: dict[str, dict[str, list[float]]] = {mode: {"cold": [], "unchanged": [], "one file changed": []}
                                               for mode in ("pod per build", "warm builder", "raw buildctl")}
    daemon_starts = []
    started = time.monotonic()
    for i in range(RUNS):  # cold: a new image and cache ref each time, and no builder up
        _remove_builders(kubectl, namespace)
        warm = Kiln(kubectl, api, namespace, f"warm{i}", spec(f"warm{i}", True))
        rows["warm builder"]["cold"].append(warm.cold())  # the builder starts, then builds
        daemon_starts.append(_daemon_start(kubectl, namespace, i))
        pods = Kiln(kubectl, api, namespace, f"pods{i}", spec(f"pods{i}", False))
        rows["pod per build"]["cold"].append(pods.cold())
        raw = Raw(kubectl, namespace, image_build(f"raw{i}", **spec(f"raw{i}", True)), logins, secrets)
        raw.prune()  # a daemon with nothing in it, as a new builder's
        rows["raw buildctl"]["cold"].append(raw.build())
    for _ in range(RUNS):  # in turns, so that no mode has the machine to itself
        for mode, run in (("pod per build", pods.again), ("warm builder", warm.again), ("raw buildctl", raw.build)):
            rows[mode]["unchanged"].append(run())
        for mode, run in (("pod per build", pods.again), ("warm builder", warm.again), ("raw buildctl", raw.build)):
            rows[mode]["one file changed"].append(one_file_changed(run))
    figures = {mode: {case: round(statistics.median(times), 2) for case, times in cases.items()}
               for mode, cases in rows.items()}
    daemon_start = statistics.median(daemon_starts)
    report = {"figures": figures, "runs": rows, "daemon start seconds": daemon_starts, "goals": GOALS,
              "bench seconds": round(time.monotonic() - started)}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "bench-builds.json").write_text(json.dumps(report, indent=2))
    print("\n| apply to Ready (s) | cold | unchanged rebuild | one file changed |\n|---|---|---|---|")
    for mode, cases in figures.items():
        print(f"| {mode} | {cases['cold']} | {cases['unchanged']} | {cases['one file changed']} |")
    print(f"a builder's start (from kiln's create or scale-up to its daemon's first accepted connection): "
          f"{daemon_start:.2f} s; goals: {GOALS}")


def _remove_builders(kubectl, namespace: str) -> None:
    kubectl("delete", "deployments", f"--namespace={namespace}", "--selector=app.kubernetes.io/component=builder",
            "--wait=true", timeout=180)
    kubectl("wait", "--for=delete", "pods", f"--namespace={namespace}", "--selector=app.kubernetes.io/component=builder",
            "--timeout=170s", check=False, timeout=180)


def _daemon_start(kubectl, namespace: str, index: int) -> float:
    """How long the index-th start of the namespace's builder took, as the operator logs it: from its Deployment's
    create (or scale-up) to the first connection its daemon accepted."""
    lines = kubectl("logs", "deployment/kiln-operator", "--namespace=kiln-system", "--tail=2000").stdout.splitlines()
    found = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in lines
             if f"builder {namespace}/" in line and " answered after " in line]
    return found[index]
