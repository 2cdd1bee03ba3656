"""What goes wrong is reported, on a real cluster: before any pod where kiln can tell, from the pod otherwise."""
from __future__ import annotations

import json
import time

from harness import IB, condition, diagnosis, eventually, image_build, kiln, registry_login
from registries import Client


def source(name: str, dockerfile: str) -> tuple[dict, dict]:
    """A ConfigMap context holding one Dockerfile, and the spec.source naming it."""
    return ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"Dockerfile": dockerfile}},
            {"configMap": {"name": name}})


def settled(kubectl, namespace: str, name: str, kind: str, timeout: float = 300) -> dict:
    """The ImageBuild once condition `kind` is True for its current generation."""
    def check():
        build = kubectl.get(IB, name, namespace)
        found = condition(build, kind)
        return found.get("status") == "True" and found.get("observedGeneration") == build["metadata"]["generation"] and build

    return eventually(check, timeout, f"{name} {kind}", lambda: diagnosis(kubectl, namespace))


def pod_runs(kubectl, namespace: str) -> None:
    eventually(lambda: any(p["status"].get("phase") == "Running" for p in kubectl.items("pods", namespace)), 120,
               "the build pod runs", lambda: diagnosis(kubectl, namespace))


def running_build_on_a(kubectl, lab, namespace: str, dockerfile: str, repository: str, **spec) -> None:
    """ImageBuild `app` FROM A's base image, pushed to `repository` in A; once its pod runs."""
    context, spec_source = source("context", f"FROM {lab.base_image}\n{dockerfile}")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), context, namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.a.host}/{repository}", "tags": ["v1"]},
                              cache={"type": "none"}, **spec), namespace=namespace)
    pod_runs(kubectl, namespace)


def start_sleeping_build(kubectl, lab, namespace: str, *, running: bool = True, **spec) -> None:
    """ImageBuild `app` whose one step sleeps ten minutes, from A's base image to B; with `running`, once its pod runs."""
    context, spec_source = source("context", f"FROM {lab.base_image}\nRUN sleep 600\n")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"), context,
                  namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/app"}, **spec),
                  namespace=namespace)
    if running:
        pod_runs(kubectl, namespace)


def test_a_wrong_password_stalls_the_build_before_any_pod_starts(kubectl, lab, namespace):
    context, spec_source = source("context", f"FROM {lab.base_image}\n")
    kubectl.apply(*registry_login("account-a", lab.a, "alice", password="not-the-password"),
                  *registry_login("account-b", lab.b, "carol"), context, namespace=namespace)
    kubectl.apply(image_build("app", registryLogins=["account-a", "account-b"], source=spec_source,
                              output={"image": f"{lab.b.host}/team/app"}), namespace=namespace)
    build = settled(kubectl, namespace, "app", "Stalled")
    login = kubectl.get("registrylogins.kiln.dev", "account-a", namespace)
    assert (condition(login, "Ready")["status"], condition(login, "Ready")["reason"]) == ("False", "AuthenticationFailed")
    credentials = condition(build, "CredentialsReady")
    assert (credentials["status"], credentials["reason"]) == ("False", "RegistryLoginNotReady")
    assert "account-a" in credentials["message"] and "not-the-password" not in str(build)
    assert kubectl.items("jobs", namespace) == [] and kubectl.items("pods", namespace) == []


def test_no_push_right_on_the_target_registry_stalls_the_build_before_any_pod(kubectl, lab, namespace):
    context, spec_source = source("context", "FROM scratch\n")
    kubectl.apply(*registry_login("account-b", lab.b, "reader"), context, namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/app"}), namespace=namespace)
    build = settled(kubectl, namespace, "app", "Stalled")
    credentials = condition(build, "CredentialsReady")
    assert (credentials["status"], credentials["reason"]) == ("False", "PushDenied")
    assert f"{lab.b.host} denies push to team/app" in credentials["message"]
    assert kubectl.items("jobs", namespace) == []


def test_a_failing_run_step_is_a_dockerfile_error_with_the_log_and_the_command_to_see_it(kubectl, lab, namespace):
    context, spec_source = source("context", f"FROM {lab.base_image}\nRUN echo compiling the thing && exit 3\n")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"), context,
                  namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/app"}), namespace=namespace)
    build = settled(kubectl, namespace, "app", "Stalled")
    failure = build["status"]["failure"]
    assert build["status"]["phase"] == "Failed" and failure["reason"] == "DockerfileError"
    assert "exit code: 3" in failure["logExcerpt"] and condition(build, "Ready")["reason"] == "DockerfileError"
    command = failure["logsCommand"].split()
    assert command[:2] == ["kiln", "logs"]
    assert "compiling the thing" in kiln(kubectl, *command[1:]).stdout  # the command in status works as printed
    assert len(kubectl.items("jobs", namespace)) == 1  # a Dockerfile error is not retried


def test_suspend_cancels_the_running_build_and_removes_its_pod_and_credentials(kubectl, lab, namespace):
    start_sleeping_build(kubectl, lab, namespace)
    running = kubectl.get(IB, "app", namespace)
    kubectl("patch", f"{IB}/app", "--type=merge", "-p", '{"spec": {"suspend": true}}', f"--namespace={namespace}")
    cancelled = eventually(lambda: (b := kubectl.get(IB, "app", namespace))["status"].get("phase") == "Cancelled" and b,
                           60, "phase Cancelled", lambda: diagnosis(kubectl, namespace))
    assert cancelled["status"]["buildID"] == running["status"]["buildID"]
    assert cancelled["status"]["history"][0]["phase"] == "Cancelled"
    eventually(lambda: kubectl.items("pods", namespace) == [], 120, "the build pod is gone")
    assert kubectl.items("jobs", namespace) == []
    assert kubectl.items("secrets", namespace, "kiln.dev/imagebuild=app") == []


def test_a_build_running_past_its_timeout_fails_timed_out(kubectl, lab, namespace):
    start_sleeping_build(kubectl, lab, namespace, running=False, timeout="20s")
    build = settled(kubectl, namespace, "app", "Stalled", timeout=180)
    assert (build["status"]["phase"], build["status"]["failure"]["reason"]) == ("Failed", "TimedOut")


def test_a_namespace_whose_pod_security_refuses_the_build_pod_fails_the_build_at_once(kubectl, lab, namespace):
    """Rootless BuildKit needs seccomp and AppArmor Unconfined, which the baseline level refuses."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    context, spec_source = source("context", "FROM scratch\n")
    kubectl.apply(*registry_login("account-b", lab.b, "carol"), context, namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/app"}), namespace=namespace)
    build = settled(kubectl, namespace, "app", "Stalled", timeout=90)
    assert build["status"]["failure"]["reason"] == "PodSecurityRejected"
    assert "violates PodSecurity" in build["status"]["failure"]["message"]
    assert kubectl.items("jobs", namespace) == [] and kubectl.items("secrets", namespace, "kiln.dev/imagebuild=app") == []


def test_deleting_an_imagebuild_mid_build_takes_its_job_pod_and_credentials_with_it(kubectl, lab, namespace):
    """The real garbage collector follows kiln's owner references."""
    start_sleeping_build(kubectl, lab, namespace)
    kubectl("delete", f"{IB}/app", f"--namespace={namespace}")
    eventually(lambda: kubectl.items("pods", namespace) == [] and kubectl.items("jobs", namespace) == []
               and kubectl.items("secrets", namespace, "app.kubernetes.io/managed-by=kiln") == [], 120,
               "the Job, its pod and the merged Secret are collected", lambda: diagnosis(kubectl, namespace))


def test_a_build_pod_deleted_mid_build_stops_at_once_and_pushes_nothing(kubectl, lab, namespace):
    """Its script is PID 1: without a handler the kernel spared it SIGTERM, and the build went on to push."""
    context, spec_source = source("context", f"FROM {lab.base_image}\nRUN sleep 15\nRUN echo built > /built\n")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"), context,
                  namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/stopped", "tags": ["v1"]},
                              cache={"type": "none"}, retries=0), namespace=namespace)
    (pod,) = eventually(lambda: [p for p in kubectl.items("pods", namespace) if p["status"].get("phase") == "Running"],
                        120, "the build pod runs", lambda: diagnosis(kubectl, namespace))
    time.sleep(3)  # into the RUN step
    started = time.monotonic()
    kubectl("delete", "pod", pod["metadata"]["name"], f"--namespace={namespace}", "--wait=true", timeout=60)
    assert time.monotonic() - started < 15  # not the 30 s grace period: it stopped when asked
    build = settled(kubectl, namespace, "app", "Stalled", timeout=120)
    assert build["status"]["failure"]["reason"] == "Evicted"
    time.sleep(15)  # as long as the build would have needed to finish and push
    assert Client(lab.b, "carol").request("GET", "/v2/team/stopped/manifests/v1")[0] == 404


def test_a_registry_down_when_the_build_pushes_is_retried_and_pushes_once_it_is_back(kubectl, lab, namespace):
    """connection refused is an outage, not a verdict: the build is retried, and succeeds with the registry back."""
    running_build_on_a(kubectl, lab, namespace, "RUN sleep 8\nRUN echo built > /built\n", "team/outage", retries=2)
    time.sleep(3)  # the base is pulled; the RUN step sleeps
    lab.a.process.kill()
    lab.a.process.wait(timeout=10)
    try:
        retried = eventually(lambda: (b := kubectl.get(IB, "app", namespace)) and any(
            u.get("retries") for u in b["status"].get("units") or []) and b, 120, "the first attempt fails, retried",
            lambda: diagnosis(kubectl, namespace))
    finally:
        lab.a.restart()
    assert retried["status"]["phase"] in ("Pending", "Building")  # not failed: an outage is no verdict
    build = settled(kubectl, namespace, "app", "Ready", timeout=300)
    assert build["status"]["phase"] == "Succeeded"
    assert Client(lab.a, "alice").manifest("team/outage", "v1")[2] == build["status"]["digest"]


def test_a_build_resumed_while_its_login_is_broken_waits_without_its_old_plan_and_builds_once_it_is_fixed(
        kubectl, lab, namespace):
    context, spec_source = source("context", f"FROM {lab.base_image}\nRUN sleep 5\n")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"), context,
                  namespace=namespace)
    kubectl.apply(image_build("app", source=spec_source, output={"image": f"{lab.b.host}/team/resumed", "tags": ["v1"]},
                              cache={"type": "none"}), namespace=namespace)
    pod_runs(kubectl, namespace)
    kubectl("patch", f"{IB}/app", "--type=merge", "-p", '{"spec": {"suspend": true}}', f"--namespace={namespace}")
    eventually(lambda: kubectl.get(IB, "app", namespace)["status"].get("phase") == "Cancelled", 60, "Cancelled",
               lambda: diagnosis(kubectl, namespace))
    kubectl("patch", "secret", "account-b-creds", "--type=merge", "-p", '{"stringData": {"password": "wrong"}}',
            f"--namespace={namespace}")
    eventually(lambda: condition(kubectl.get("registrylogin", "account-b", namespace), "Ready").get("status") == "False",
               60, "the login is refused", lambda: diagnosis(kubectl, namespace))
    kubectl("patch", f"{IB}/app", "--type=merge", "-p", '{"spec": {"suspend": false}}', f"--namespace={namespace}")
    waiting = eventually(lambda: (b := kubectl.get(IB, "app", namespace))["status"].get("phase") == "Pending"
                         and condition(b, "CredentialsReady").get("status") == "False" and b, 60, "the build waits")
    assert "units" not in waiting["status"]  # the suspended plan is neither followed nor counted
    assert [j for j in kubectl.items("jobs", namespace) if not j["status"].get("conditions")] == []
    kubectl("patch", "secret", "account-b-creds", "--type=merge", "-p",
            json.dumps({"stringData": {"password": lab.b.users["carol"]}}), f"--namespace={namespace}")
    build = settled(kubectl, namespace, "app", "Ready", timeout=300)
    assert build["status"]["phase"] == "Succeeded" and build["status"]["units"][0]["job"].endswith("-r1")


def test_a_password_rotated_mid_build_is_retried_with_the_new_one(kubectl, lab, namespace):
    """The registry revokes the old password while the build runs; the login's Secret gets the new one."""
    old = lab.a.users["alice"]
    running_build_on_a(kubectl, lab, namespace, "RUN sleep 10\n", "team/rotated", retries=1)
    try:
        lab.a.rotate("alice", "alice-rotated-pw9")
        kubectl("patch", "secret", "account-a-creds", "--type=merge", "-p",
                json.dumps({"stringData": {"password": "alice-rotated-pw9"}}), f"--namespace={namespace}")
        build = settled(kubectl, namespace, "app", "Ready", timeout=300)
    finally:
        lab.a.rotate("alice", old)
    assert build["status"]["phase"] == "Succeeded" and build["status"]["units"][0]["retries"] == 1


def test_a_job_of_the_current_build_that_its_plan_does_not_name_is_deleted(kubectl, lab, namespace):
    """What an operator killed between its creates and its status write leaves when the plan changes meanwhile."""
    start_sleeping_build(kubectl, lab, namespace)
    build = kubectl.get(IB, "app", namespace)
    labels = {"app.kubernetes.io/managed-by": "kiln", "kiln.dev/imagebuild": "app",
              "kiln.dev/build-id": build["status"]["buildID"], "kiln.dev/unit": "arm64"}
    orphan = f"app-{build['status']['buildID']}-arm64"
    kubectl.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {
        "name": orphan, "labels": labels, "ownerReferences": [{
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "name": "app", "uid": build["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"suspend": True, "template": {"metadata": {"labels": labels}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "buildkit", "image": "busybox"}]}}}}, namespace=namespace)
    eventually(lambda: (job := kubectl.get("job", orphan, namespace)) is None or job["metadata"].get("deletionTimestamp"),
               90, "the orphan Job is deleted", lambda: diagnosis(kubectl, namespace))
    assert [j["metadata"]["labels"]["kiln.dev/unit"] for j in kubectl.items("jobs", namespace)
            if not j["metadata"].get("deletionTimestamp")] == ["all"]
