"""Every user story, built for real: BuildKit pods on real nodes, pushing to real registries."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time

import pytest

from scrape import delta, scrape

from harness import (
    GIT_TOKEN,
    IB,
    ROOT,
    build_secret,
    condition,
    diagnosis,
    eventually,
    host_volume,
    image_build,
    layer_files,
    registry_login,
    wait_ready,
)
from registries import Client, RunningRegistry

PLATFORMS = ["linux/amd64", "linux/arm64"]
# A RUN step that leaves a different layer every time it really runs: a reused layer proves the cache.
SEED_DOCKERFILE = """FROM {base}
RUN echo "built on $(uname -m), run $(cat /proc/sys/kernel/random/uuid)" > /built
COPY deploy.sh /deploy.sh
COPY target/application.jar /app.jar
"""


def platform_images(client: Client, repository: str, reference: str) -> dict[str, dict]:
    """platform -> (manifest digest, manifest) of an index, attestations left out."""
    _, index, _ = client.manifest(repository, reference)
    images = {}
    for entry in index["manifests"]:
        platform = entry["platform"]
        if platform["os"] != "unknown":
            images[f"{platform['os']}/{platform['architecture']}"] = {
                "digest": entry["digest"], "manifest": client.manifest(repository, entry["digest"])[1]}
    return images


def workspace(tmp_path, dockerfile: str) -> dict:
    """What the Java step leaves in the workspace volume."""
    (tmp_path / "target").mkdir(parents=True, exist_ok=True)
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "deploy.sh").write_text("#!/bin/sh\necho deploying\n")
    (tmp_path / "target" / "application.jar").write_text("PK not really a jar\n")
    tmp_path.chmod(0o755)
    return {}


def test_seed_story_from_a_private_registry_to_another_with_two_platforms_and_registry_cache(
        kubectl, lab, namespace, operator, tmp_path, record_property):
    """FROM a private image in registry A (account A), pushed to registry B (account B): both logins in one
    build, linux/amd64 natively and linux/arm64 under QEMU in one pod, cache at <image>:build-cache in B;
    then the same spec rebuilt with fresh BuildKit state takes every layer from the registry cache."""
    work = tmp_path / "workspace"
    workspace(work / "spring-boot", SEED_DOCKERFILE.format(base=lab.base_image))
    image = f"{lab.b.host}/yunxiao-demo/app1"
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  host_volume(kubectl, namespace, "workspace-app1", work), namespace=namespace)
    started = time.monotonic()
    kubectl.apply(image_build("app1", registryLogins=["account-a", "account-b"],
                              source={"volume": {"claimName": "workspace-app1", "path": "spring-boot"}},
                              output={"image": image, "tags": ["2024-09-19-12-24-56", "latest"]},
                              platforms=PLATFORMS, multiArch={"strategy": "qemu"}), namespace=namespace)
    first = wait_ready(kubectl, namespace, "app1")
    cold = time.monotonic() - started

    client = Client(lab.b, "carol")
    status = first["status"]
    _, _, pushed = client.manifest("yunxiao-demo/app1", "latest")
    assert status["digest"] == pushed and status["image"] == f"{image}@{pushed}"
    assert client.manifest("yunxiao-demo/app1", "2024-09-19-12-24-56")[2] == pushed  # every tag, one index
    images = platform_images(client, "yunxiao-demo/app1", "latest")
    assert sorted(images) == PLATFORMS
    assert {p["platform"]: p["digest"] for p in status["platforms"]} == {p: i["digest"] for p, i in images.items()}
    for platform, machine in (("linux/amd64", b"x86_64"), ("linux/arm64", b"aarch64")):
        run_layer = images[platform]["manifest"]["layers"][1]["digest"]  # base, RUN, COPY, COPY
        assert layer_files(client.blob("yunxiao-demo/app1", run_layer))["built"].startswith(b"built on " + machine)
    client.manifest("yunxiao-demo/app1", "build-cache")  # the cache went where the story says
    assert status["cache"]["exportRef"] == f"{image}:build-cache"
    assert condition(first, "CredentialsReady")["status"] == "True"
    assert kubectl.items("secrets", namespace, "kiln.dev/imagebuild=app1") == []  # credentials gone with the build

    # The same spec again: a new pod, so a fresh BuildKit state; only the registry cache can give it the layers.
    counted = scrape(operator.metrics)
    started = time.monotonic()
    kubectl("annotate", f"{IB}/app1", "kiln.dev/rebuild=again", f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app1", namespace)["status"].get("buildID") != status["buildID"], 60,
               "the rebuild starts", lambda: diagnosis(kubectl, namespace))
    second = wait_ready(kubectl, namespace, "app1")
    warm = time.monotonic() - started
    again = platform_images(client, "yunxiao-demo/app1", "latest")
    for platform in PLATFORMS:
        assert [layer["digest"] for layer in again[platform]["manifest"]["layers"]] == \
               [layer["digest"] for layer in images[platform]["manifest"]["layers"]], platform
    cache = second["status"]["cache"]
    assert cache["cachedSteps"] == cache["totalSteps"] > 0, cache
    # What Prometheus scrapes says the same: one more build succeeded, every step of it from the cache.
    now = scrape(operator.metrics)
    assert delta(now, counted, "kiln_builds_started_total") == delta(now, counted, "kiln_builds_succeeded_total") == 1
    assert delta(now, counted, "kiln_build_duration_seconds_count", cache="registry", strategy="qemu", result="succeeded") == 1
    assert delta(now, counted, "kiln_cache_steps_total", cached="true") == cache["cachedSteps"]
    assert delta(now, counted, "kiln_cache_steps_total", cached="false") == 0
    record_property("seed cold build seconds", round(cold))
    record_property("seed rebuild seconds", round(warm))
    print(f"\nseed story: cold build {cold:.0f}s, rebuild from registry cache {warm:.0f}s ({warm / cold:.2f}x); "
          f"status: {json.dumps(second['status']['cache'])}")


def test_cache_moved_to_another_registry_address_is_exported_there_and_reused(kubectl, lab, namespace, tmp_path):
    """The in-VPC story: the cache lives in another registry (A), with its own login; a rebuild after a change
    of the last COPY reuses every earlier layer from there."""
    work = tmp_path / "workspace"
    workspace(work, SEED_DOCKERFILE.format(base=lab.base_image))
    cache_ref = f"{lab.a.host}/hub-mirrors/openjdk:app1-flow-cache"
    kubectl.apply(*registry_login("account-a-vpc", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  host_volume(kubectl, namespace, "workspace", work), namespace=namespace)
    kubectl.apply(image_build("app1", registryLogins=["account-a-vpc", "account-b"],
                              source={"volume": {"claimName": "workspace"}},
                              output={"image": f"{lab.b.host}/yunxiao-demo/app1-vpc", "tags": ["v1"]},
                              cache={"type": "registry", "ref": cache_ref}), namespace=namespace)
    first = wait_ready(kubectl, namespace, "app1")
    cache_client, client = Client(lab.a, "alice"), Client(lab.b, "carol")
    cache_client.manifest("hub-mirrors/openjdk", "app1-flow-cache")
    assert client.request("GET", "/v2/yunxiao-demo/app1-vpc/manifests/build-cache")[0] == 404  # not beside the image
    (before,) = [image["manifest"]["layers"] for image in platform_images(client, "yunxiao-demo/app1-vpc", "v1").values()]

    (work / "target" / "application.jar").write_text("PK a new build of the jar\n")
    kubectl("annotate", f"{IB}/app1", "kiln.dev/rebuild=new-jar", f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app1", namespace)["status"].get("buildID") != first["status"]["buildID"], 60,
               "the rebuild starts")
    second = wait_ready(kubectl, namespace, "app1")
    (after,) = [image["manifest"]["layers"] for image in platform_images(client, "yunxiao-demo/app1-vpc", "v1").values()]
    assert [layer["digest"] for layer in after[:3]] == [layer["digest"] for layer in before[:3]]  # base, RUN, COPY
    assert after[3]["digest"] != before[3]["digest"]  # the new jar
    assert (second["status"]["cache"]["cachedSteps"], second["status"]["cache"]["totalSteps"]) == (2, 3)


def test_local_cache_keeps_buildkit_state_on_a_volume_with_no_registry_round_trip(kubectl, lab, namespace, tmp_path):
    """A dedicated builder: BuildKit's state lives on a volume, so a second build finds every step there."""
    work, state = tmp_path / "workspace", tmp_path / "buildkit-state"
    workspace(work, SEED_DOCKERFILE.format(base=lab.base_image))
    state.mkdir()
    state.chmod(0o777)  # the rootless daemon (uid 1000) owns what it writes there
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  host_volume(kubectl, namespace, "workspace", work),
                  host_volume(kubectl, namespace, "buildkit-state-app1", state), namespace=namespace)
    kubectl.apply(image_build("app1", source={"volume": {"claimName": "workspace"}},
                              output={"image": f"{lab.b.host}/yunxiao-demo/app1-local", "tags": ["v1"]},
                              cache={"type": "local", "volume": {"claimName": "buildkit-state-app1"}}), namespace=namespace)
    first = wait_ready(kubectl, namespace, "app1")
    kubectl("annotate", f"{IB}/app1", "kiln.dev/rebuild=2", f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app1", namespace)["status"].get("buildID") != first["status"]["buildID"], 60,
               "the rebuild starts")
    second = wait_ready(kubectl, namespace, "app1")
    # Every layer the same, so the same image: the RUN did not run again (the index differs: its provenance says
    # when the build ran).
    assert [p["digest"] for p in second["status"]["platforms"]] == [p["digest"] for p in first["status"]["platforms"]]
    assert second["status"]["cache"]["cachedSteps"] == second["status"]["cache"]["totalSteps"] == 3
    client = Client(lab.b, "carol")
    assert client.request("GET", "/v2/yunxiao-demo/app1-local/manifests/build-cache")[0] == 404
    assert any(state.iterdir())  # the daemon's state is on the volume


def test_context_from_a_private_git_repository_with_a_token(kubectl, lab, namespace):
    from gitserver import make_repository

    make_repository(lab.repositories / namespace, {
        "services/api/Dockerfile": f"FROM {lab.base_image}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
        "services/api/hello.txt": "from git\n"})
    authorized = lab.git.authorized
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  build_secret("git-token", "x-access-token", GIT_TOKEN), namespace=namespace)
    url = lab.git.url.replace("/app.git", f"/{namespace}/app.git")
    kubectl.apply(image_build("api", source={"git": {"url": url, "revision": "main", "secretRef": {"name": "git-token"}},
                                             "contextDir": "services/api"},
                              output={"image": f"{lab.b.host}/team/api", "tags": ["v1"]}), namespace=namespace)
    build = wait_ready(kubectl, namespace, "api")
    assert build["status"]["digest"] == Client(lab.b, "carol").manifest("team/api", "v1")[2]
    assert lab.git.authorized > authorized  # BuildKit came with the token, as a build secret
    job = kubectl.items("jobs", namespace)[0]
    assert GIT_TOKEN not in json.dumps(job)  # never in the Job's arguments


def test_context_from_a_config_map_with_auto_strategy_builds_native_where_nodes_exist(kubectl, lab, namespace):
    """auto: linux/amd64 on the amd64 node, linux/riscv64 and linux/s390x (no such nodes) emulated in one more pod;
    one index of all three."""
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
                   "data": {"Dockerfile": "FROM scratch\nCOPY motd /etc/motd\n", "motd": "from a ConfigMap\n"}},
                  namespace=namespace)
    kubectl.apply(image_build("small", source={"configMap": {"name": "context"}},
                              platforms=["linux/amd64", "linux/riscv64", "linux/s390x"],
                              multiArch={"strategy": "auto"}, cache={"type": "none"},
                              output={"image": f"{lab.b.host}/team/small", "tags": ["v1"]}), namespace=namespace)
    build = wait_ready(kubectl, namespace, "small")
    assert {p["platform"]: p["builtBy"] for p in build["status"]["platforms"]} == {
        "linux/amd64": "native", "linux/riscv64": "qemu", "linux/s390x": "qemu"}
    nodes = {pod["metadata"]["labels"]["kiln.dev/unit"]: pod["spec"]["nodeName"] for pod in kubectl.items("pods", namespace)}
    assert nodes["amd64"] == "kiln-amd64"
    images = platform_images(Client(lab.b, "carol"), "team/small", "v1")
    assert {p: i["digest"] for p, i in images.items()} == {p["platform"]: p["digest"] for p in build["status"]["platforms"]}


def apply_native_seed_story(kubectl, lab, namespace: str, tmp_path, repository: str, tags: list[str]) -> None:
    """The seed story's workspace and logins, and ImageBuild app1 building it natively for both platforms into B."""
    work = tmp_path / "workspace"
    workspace(work, SEED_DOCKERFILE.format(base=lab.base_image))
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  host_volume(kubectl, namespace, "workspace", work), namespace=namespace)
    kubectl.apply(image_build("app1", source={"volume": {"claimName": "workspace"}}, platforms=PLATFORMS,
                              multiArch={"strategy": "native"}, output={"image": f"{lab.b.host}/{repository}", "tags": tags}),
                  namespace=namespace)


def test_native_multiarch_runs_one_pod_on_each_architectures_node_and_assembles_one_index(kubectl, lab, namespace,
                                                                                          tmp_path):
    apply_native_seed_story(kubectl, lab, namespace, tmp_path, "yunxiao-demo/app1-native", ["v1", "latest"])
    build = wait_ready(kubectl, namespace, "app1")
    pods = {pod["metadata"]["labels"]["kiln.dev/unit"]: pod for pod in kubectl.items("pods", namespace)}
    assert {unit: pod["spec"]["nodeName"] for unit, pod in pods.items()} == {"amd64": "kiln-amd64", "arm64": "kiln-arm64"}
    arm64_node = kubectl.get("node", "kiln-arm64")
    assert arm64_node["status"]["nodeInfo"]["architecture"] == "arm64"  # the kubelet itself is arm64 (under QEMU)
    client = Client(lab.b, "carol")
    _, _, pushed = client.manifest("yunxiao-demo/app1-native", "v1")
    assert build["status"]["digest"] == pushed == client.manifest("yunxiao-demo/app1-native", "latest")[2]
    images = platform_images(client, "yunxiao-demo/app1-native", "v1")
    assert {p["platform"]: (p["digest"], p["builtBy"]) for p in build["status"]["platforms"]} == {
        p: (i["digest"], "native") for p, i in images.items()}
    arm64_run = images["linux/arm64"]["manifest"]["layers"][1]["digest"]
    assert layer_files(client.blob("yunxiao-demo/app1-native", arm64_run))["built"].startswith(b"built on aarch64")


def quick_start_commands() -> list[str]:
    """The kubectl commands of the README's Quick start, in order, as printed."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.startswith("kubectl ")]


@pytest.mark.skipif(bool(os.environ.get("KILN_E2E_ADDRESS")), reason="the quick start pushes to the local cluster's registry")
def test_the_readme_quick_start_builds_two_platforms_into_the_local_registry_as_printed(kubectl, operator):
    from cluster import registry

    commands = quick_start_commands()
    assert commands == ["kubectl apply -f manifests/samples/00-quickstart.yaml", "kubectl get ib -w", "kubectl get ib hello"]
    sample = str(ROOT / "manifests" / "samples" / "00-quickstart.yaml")
    kubectl("delete", "-f", sample, "--ignore-not-found", "--wait=true")  # a build left by hand would answer at once
    env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        subprocess.run(commands[0], shell=True, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
        watch = subprocess.Popen(commands[1], shell=True, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        lines = []
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not any(" Succeeded " in line for line in lines):
                lines.append(watch.stdout.readline())
        finally:
            watch.kill()
        assert lines[0].split()[:2] == ["NAME", "PHASE"] and any(" Succeeded " in line for line in lines), "".join(lines)
        shown = subprocess.run(commands[2], shell=True, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        header, row = shown.splitlines()
        assert header.split() == ["NAME", "PHASE", "IMAGE", "PLATFORMS", "DIGEST", "DURATION", "AGE"]
        name, phase, image, platforms, digest = row.split()[:5]
        build = kubectl.get(IB, "hello", "default")
        assert (name, phase, image, json.loads(platforms)) == (
            "hello", "Succeeded", f"{registry.HOST}/quickstart/hello", ["linux/amd64", "linux/arm64"])
        assert build["status"]["startTime"] >= started and build["status"]["digest"].startswith(f"sha256:{digest}")
        client = Client(RunningRegistry(registry.HOST, {registry.USER: registry.PASSWORD}, None), registry.USER)
        assert client.manifest("quickstart/hello", "v1")[2] == build["status"]["digest"]
        images = platform_images(client, "quickstart/hello", "v1")
        for platform, machine in (("linux/amd64", b"x86_64"), ("linux/arm64", b"aarch64")):
            layer = images[platform]["manifest"]["layers"][-1]["digest"]
            assert layer_files(client.blob("quickstart/hello", layer))["hello"] == b"hello from " + machine + b"\n"
    finally:
        kubectl("delete", "-f", sample, "--ignore-not-found", "--wait=false")


@contextlib.contextmanager
def cordoned(kubectl, node: str):
    """The node takes no new pods while the block runs."""
    kubectl("cordon", node)
    try:
        yield
    finally:
        kubectl("uncordon", node)


def motd_context(motd: str) -> dict:
    """ConfigMap `context`: an image of one file, FROM scratch (no RUN: any platform builds anywhere, fast)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
            "data": {"Dockerfile": "FROM scratch\nCOPY motd /etc/motd\n", "motd": motd}}


def test_one_platform_builds_on_a_node_of_its_architecture_not_emulated_elsewhere(kubectl, lab, namespace):
    kubectl.apply(*registry_login("account-b", lab.b, "carol"), motd_context("arm64 only\n"), namespace=namespace)
    kubectl.apply(image_build("arm", source={"configMap": {"name": "context"}}, platforms=["linux/arm64"],
                              cache={"type": "none"}, output={"image": f"{lab.b.host}/team/arm", "tags": ["v1"]}),
                  namespace=namespace)
    build = wait_ready(kubectl, namespace, "arm")
    assert [p["builtBy"] for p in build["status"]["platforms"]] == ["native"]
    assert [pod["spec"]["nodeName"] for pod in kubectl.items("pods", namespace)] == ["kiln-arm64"]


def test_auto_emulates_an_architecture_whose_only_node_is_cordoned(kubectl, lab, namespace):
    """A unit pinned to a cordoned node would wait Unschedulable until its timeout."""
    kubectl.apply(*registry_login("account-b", lab.b, "carol"), motd_context("cordoned\n"), namespace=namespace)
    with cordoned(kubectl, "kiln-arm64"):
        kubectl.apply(image_build("app", source={"configMap": {"name": "context"}}, cache={"type": "none"},
                                  platforms=["linux/amd64", "linux/arm64"], multiArch={"strategy": "auto"},
                                  output={"image": f"{lab.b.host}/team/cordoned", "tags": ["v1"]}), namespace=namespace)
        build = wait_ready(kubectl, namespace, "app")
    assert {p["platform"]: p["builtBy"] for p in build["status"]["platforms"]} == {
        "linux/amd64": "native", "linux/arm64": "qemu"}
    assert {pod["spec"]["nodeName"] for pod in kubectl.items("pods", namespace)} == {"kiln-amd64"}


def test_a_unit_no_node_fits_says_so_while_it_waits_and_builds_once_a_node_takes_it(kubectl, lab, namespace):
    kubectl.apply(*registry_login("account-b", lab.b, "carol"), motd_context("waited\n"), namespace=namespace)
    with cordoned(kubectl, "kiln-arm64"):
        kubectl.apply(image_build("app", source={"configMap": {"name": "context"}}, cache={"type": "none"},
                                  platforms=["linux/amd64", "linux/arm64"], multiArch={"strategy": "native"},
                                  output={"image": f"{lab.b.host}/team/waited", "tags": ["v1"]}), namespace=namespace)
        eventually(lambda: "linux/arm64: waiting for a node" in condition(kubectl.get(IB, "app", namespace),
                                                                          "Reconciling").get("message", ""),
                   120, "the status names the unit no node fits", lambda: diagnosis(kubectl, namespace))
    build = wait_ready(kubectl, namespace, "app")
    assert {p["platform"]: p["builtBy"] for p in build["status"]["platforms"]} == {
        "linux/amd64": "native", "linux/arm64": "native"}
