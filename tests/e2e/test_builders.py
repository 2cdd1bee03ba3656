"""Warm builders on the real cluster: the operator Deployment is the BuildKit client of a rootless daemon it
starts in the build's namespace (user-namespaced, behind mutual TLS), and the daemon's state serves the next build."""
from __future__ import annotations

import json
import time

from test_builds import platform_images

from kiln.build.logs import kept_text, live

from gitserver import make_repository
from harness import (
    GIT_TOKEN,
    IB,
    OPERATOR,
    build_secret,
    condition,
    diagnosis,
    eventually,
    host_volume,
    image_build,
    registry_login,
    wait_ready,
)
from registries import Client

DOCKERFILE = """FROM {base}
RUN echo built > /built
COPY app.txt /app.txt
"""


def _git(kubectl, lab, namespace: str, files: dict[str, str]) -> dict:
    """A private repository of files, the logins of registries A and B, and the git token: the build's source."""
    make_repository(lab.repositories / namespace, files)
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  build_secret("git-token", "x-access-token", GIT_TOKEN), namespace=namespace)
    return {"git": {"url": lab.git.url.replace("/app.git", f"/{namespace}/app.git"), "revision": "main",
                    "secretRef": {"name": "git-token"}}}


def _builder(kubectl, namespace: str) -> dict:
    (deployment,) = kubectl.items("deployments", namespace, "app.kubernetes.io/component=builder")
    return deployment


def _processes(kubectl, namespace: str, builder: str) -> str:
    """Every command line in the builder's pod, RUN steps of its builds included."""
    return kubectl("exec", f"deployment/{builder}", f"--namespace={namespace}", "--", "sh", "-c",
                   "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done", check=False).stdout


def _running_on_the_builder(kubectl, namespace: str, marker: str) -> str:
    """The namespace's builder, once a RUN step with marker in its command line runs on it."""
    builder = eventually(lambda: kubectl.items("deployments", namespace, "app.kubernetes.io/component=builder"), 120,
                         "a builder", lambda: diagnosis(kubectl, namespace))[0]["metadata"]["name"]
    eventually(lambda: marker in _processes(kubectl, namespace, builder), 300, "the RUN step runs on the builder",
               lambda: diagnosis(kubectl, namespace))
    return builder


def test_a_warm_build_and_its_unchanged_rebuild_run_on_the_namespaces_builder_without_a_pod_of_their_own(
        kubectl, lab, namespace, record_property):
    """The namespace makes warm builders the default: the ImageBuild leaves spec.builder.warm unset."""
    source = _git(kubectl, lab, namespace, {"Dockerfile": DOCKERFILE.format(base=lab.base_image), "app.txt": "one\n"})
    kubectl("label", "namespace", namespace, "kiln.dev/default-builder=warm")
    started = time.monotonic()
    kubectl.apply(image_build("app", source=source, platforms=["linux/amd64"],
                              output={"image": f"{lab.b.host}/team/warm", "tags": ["v1"]}, cache={"type": "none"},
                              historyLimit=1), namespace=namespace)
    first = wait_ready(kubectl, namespace, "app")
    cold = time.monotonic() - started
    started = time.monotonic()
    kubectl("annotate", f"{IB}/app", "kiln.dev/rebuild=again", f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app", namespace)["status"].get("buildID") != first["status"]["buildID"], 60,
               "the rebuild starts", lambda: diagnosis(kubectl, namespace))
    second = wait_ready(kubectl, namespace, "app")
    warm = time.monotonic() - started

    cache = second["status"]["cache"]
    assert cache["cachedSteps"] == cache["totalSteps"] == 2, cache  # the daemon's own state: no cache import
    assert condition(second, "Ready")["status"] == "True"
    assert kubectl.items("jobs", namespace) == []  # no build pod: the operator was the client
    # The first build left the history (historyLimit 1), and its log with it; the rebuild's is kept.
    assert [c["metadata"]["labels"]["kiln.dev/build-id"] for c in kubectl.items("configmaps", namespace,
                                                                               "kiln.dev/build-log")] \
        == [second["status"]["buildID"]]
    pod = _builder(kubectl, namespace)["spec"]["template"]["spec"]
    assert pod["hostUsers"] is False and pod["containers"][0]["securityContext"] == {"procMount": "Unmasked"}
    # The build's credentials are not the builder's: its Secret holds certificates and settings only.
    (secret,) = kubectl.items("secrets", namespace, "app.kubernetes.io/component=builder")
    settings = {"ca.crt", "client.crt", "client.key", "subid", "tls.crt", "tls.key", "buildkitd.toml"}
    assert [key for key in secret["data"] if key not in settings and not key.startswith("ca-")] == []
    record_property("warm builder cold build seconds", round(cold, 1))
    record_property("warm builder unchanged rebuild seconds", round(warm, 1))
    print(f"\nwarm builder: first build {cold:.1f}s (builder start included), unchanged rebuild {warm:.1f}s; "
          f"status: {json.dumps(cache)}")


def test_suspending_a_warm_build_stops_its_run_step_on_the_builder(kubectl, lab, namespace):
    marker = "sleep 347"
    source = _git(kubectl, lab, namespace, {"Dockerfile": f"FROM {lab.base_image}\nRUN {marker}\n"})
    kubectl.apply(image_build("slow", source=source, platforms=["linux/amd64"],
                              output={"image": f"{lab.b.host}/team/slow", "tags": ["v1"]}, cache={"type": "none"},
                              builder={"warm": True}), namespace=namespace)
    builder = _running_on_the_builder(kubectl, namespace, marker)
    # No pod to read its log from: the operator writes it to its ConfigMap as it runs.
    eventually(lambda: [log for log in kubectl.items("configmaps", namespace, "kiln.dev/build-log")
                        if live(log) and f"RUN {marker}" in kept_text(log)], 30, "the running build's log",
               lambda: diagnosis(kubectl, namespace))
    kubectl("patch", f"{IB}/slow", f"--namespace={namespace}", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    eventually(lambda: kubectl.get(IB, "slow", namespace)["status"].get("phase") == "Cancelled", 60, "Cancelled",
               lambda: diagnosis(kubectl, namespace))
    eventually(lambda: marker not in _processes(kubectl, namespace, builder), 30, "the RUN step stopped",
               lambda: _processes(kubectl, namespace, builder))


def test_a_warm_build_whose_operator_is_killed_mid_build_is_run_again_by_its_successor(
        kubectl, lab, namespace, operator):
    marker = "sleep 15"
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"}, "data": {
                      "Dockerfile": f"FROM {lab.base_image}\nRUN {marker} && echo slow > /slow\n"}},
                  namespace=namespace)
    kubectl.apply(image_build("slow", source={"configMap": {"name": "context"}}, platforms=["linux/amd64"],
                              output={"image": f"{lab.b.host}/team/warm-slow", "tags": ["v1"]}, cache={"type": "none"},
                              builder={"warm": True}), namespace=namespace)
    _running_on_the_builder(kubectl, namespace, marker)
    first = operator.pod()["metadata"]["name"]
    kubectl("delete", "pod", first, f"--namespace={OPERATOR[0]}", "--grace-period=0", "--force", "--wait=false")
    eventually(lambda: operator.pod()["metadata"]["name"] != first, 300, "a new operator pod is Ready", operator.tail)
    build = wait_ready(kubectl, namespace, "slow")
    (unit,) = build["status"]["units"]
    assert (unit["attempt"], unit["retries"]) == (1, 1)  # the lost run, run again
    assert build["status"]["digest"] == Client(lab.b, "carol").manifest("team/warm-slow", "v1")[2]
    assert kubectl.items("jobs", namespace) == []


def test_a_warm_builders_state_on_a_local_cache_volume_outlives_its_scaling_to_zero(kubectl, lab, namespace, tmp_path):
    """The seed's story 3 on a warm builder: its daemon keeps its state on the build's volume, so the daemon of the
    next build, after the builder was scaled to zero (as it is when idle), finds every step there; that build
    scales it up again."""
    state = tmp_path / "buildkit-state"
    state.mkdir()
    state.chmod(0o777)  # the rootless daemon writes there as its own user
    source = _git(kubectl, lab, namespace, {"Dockerfile": DOCKERFILE.format(base=lab.base_image), "app.txt": "one\n"})
    kubectl.apply(host_volume(kubectl, namespace, "state", state), namespace=namespace)
    kubectl.apply(image_build("app", source=source, platforms=["linux/amd64"], builder={"warm": True},
                              output={"image": f"{lab.b.host}/team/warm-local", "tags": ["v1"]},
                              cache={"type": "local", "volume": {"claimName": "state"}}), namespace=namespace)
    first = wait_ready(kubectl, namespace, "app")
    builder = _builder(kubectl, namespace)
    claim = next(v for v in builder["spec"]["template"]["spec"]["volumes"] if v["name"] == "buildkit-state")
    assert claim["persistentVolumeClaim"] == {"claimName": "state"}
    kubectl("scale", f"deployment/{builder['metadata']['name']}", "--replicas=0", f"--namespace={namespace}")
    kubectl("wait", "--for=delete", "pods", f"--namespace={namespace}", "--selector=app.kubernetes.io/component=builder",
            "--timeout=120s", check=False, timeout=130)
    kubectl("annotate", f"{IB}/app", "kiln.dev/rebuild=2", f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app", namespace)["status"].get("buildID") != first["status"]["buildID"], 60,
               "the rebuild starts", lambda: diagnosis(kubectl, namespace))
    second = wait_ready(kubectl, namespace, "app")
    assert second["status"]["cache"]["cachedSteps"] == second["status"]["cache"]["totalSteps"] == 2
    assert any(state.iterdir())  # the daemon's state is on the volume
    assert _builder(kubectl, namespace)["spec"]["replicas"] == 1


def test_native_multiarch_on_warm_builders_runs_one_builder_per_architecture_on_its_nodes(kubectl, lab, namespace):
    source = _git(kubectl, lab, namespace, {"Dockerfile": f"FROM {lab.base_image}\nRUN uname -m > /arch\n"})
    kubectl.apply(image_build("multi", source=source, platforms=["linux/amd64", "linux/arm64"],
                              multiArch={"strategy": "native"}, cache={"type": "none"}, builder={"warm": True},
                              output={"image": f"{lab.b.host}/team/warm-multi", "tags": ["v1"]}), namespace=namespace)
    build = wait_ready(kubectl, namespace, "multi", timeout=900)
    builders = kubectl.items("deployments", namespace, "app.kubernetes.io/component=builder")
    arches = sorted(d["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] for d in builders)
    assert arches == ["amd64", "arm64"]
    nodes = {p["spec"]["nodeSelector"]["kubernetes.io/arch"]: p["spec"]["nodeName"]
             for p in kubectl.items("pods", namespace, "app.kubernetes.io/component=builder")}
    assert nodes == {"amd64": "kiln-amd64", "arm64": "kiln-arm64"}
    assert [(p["platform"], p["builtBy"]) for p in build["status"]["platforms"]] == [
        ("linux/amd64", "native"), ("linux/arm64", "native")]
    images = platform_images(Client(lab.b, "carol"), "team/warm-multi", "v1")
    assert sorted(images) == ["linux/amd64", "linux/arm64"]
    assert kubectl.items("jobs", namespace) == []
