"""The CLI as users run it, against the real cluster: `kubectl kiln build --follow` of the seed story, and
`kiln logs` of a failed build whose pods are gone."""
from __future__ import annotations

from test_builds import PLATFORMS, apply_native_seed_story

from harness import IB, condition, eventually, image_build, kiln, registry_login, wait_ready


def test_kubectl_kiln_build_follow_streams_the_native_seed_story_and_exits_0(kubectl, lab, namespace, tmp_path):
    apply_native_seed_story(kubectl, lab, namespace, tmp_path, "yunxiao-demo/app1-cli", ["v1"])
    first = wait_ready(kubectl, namespace, "app1")
    followed = kiln(kubectl, "build", "app1", "-n", namespace, "--follow", plugin=True)
    assert followed.returncode == 0, followed.stderr[-2000:]
    lines = followed.stdout.splitlines()
    for platform in PLATFORMS:  # each pod's log, as it came, named by its platform
        assert any(line.startswith(f"[{platform}] ") and "RUN echo" in line for line in lines), followed.stdout[-3000:]
    build = kubectl.get(IB, "app1", namespace)
    assert build["status"]["buildID"] != first["status"]["buildID"]
    assert f"{build['status']['buildID']} succeeded: {build['status']['image']}" in followed.stderr
    table = kiln(kubectl, "status", "app1", "-n", namespace)
    assert table.returncode == 0 and f"Image       {build['status']['image']}" in table.stdout


def test_kiln_logs_shows_the_failing_run_line_after_the_pods_are_gone_and_a_failing_rebuild_exits_1(
        kubectl, lab, namespace):
    kubectl.apply(*registry_login("account-a", lab.a, "alice"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"}, "data": {
                      "Dockerfile": f"FROM {lab.base_image}\nRUN echo 'compiling: undefined symbol kiln_e2e_xyz' && exit 3\n"}},
                  namespace=namespace)
    kubectl.apply(image_build("broken", source={"configMap": {"name": "context"}}, retries=0,
                              output={"image": f"{lab.a.host}/team/broken", "tags": ["v1"]}), namespace=namespace)
    failed = eventually(lambda: (b := kubectl.get(IB, "broken", namespace)) and condition(b, "Stalled").get("status") == "True"
                        and b, 300, "the build fails")
    assert failed["status"]["failure"]["logsCommand"] == \
        f"kiln logs broken -n {namespace} --build {failed['status']['buildID']}"
    kubectl("delete", "pods", f"--namespace={namespace}", "--selector=kiln.dev/imagebuild=broken", "--wait=true")
    assert kubectl.items("pods", namespace, "kiln.dev/imagebuild=broken") == []
    shown = kiln(kubectl, *failed["status"]["failure"]["logsCommand"].split()[1:])
    assert shown.returncode == 0, shown.stderr
    assert "compiling: undefined symbol kiln_e2e_xyz" in shown.stdout
    steps = kiln(kubectl, "logs", "broken", "-n", namespace, "--steps")
    assert any("RUN echo" in line and "ERROR" in line for line in steps.stdout.splitlines()), steps.stdout
    again = kiln(kubectl, "build", "broken", "-n", namespace, "--wait")
    assert again.returncode == 1 and "failed: DockerfileError" in again.stderr, again.stderr
    missing = kiln(kubectl, "logs", "nothing-here", "-n", namespace)
    assert (missing.returncode, missing.stderr.strip()) == (1, f"kiln: ImageBuild {namespace}/nothing-here not found")
