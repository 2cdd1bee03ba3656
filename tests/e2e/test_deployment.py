"""kiln as users install it: the Deployment of manifests/, the image kiln built of itself, the pod's own
ServiceAccount token, and a successor that finishes what a deleted operator pod started."""
from __future__ import annotations

import json
import os

import pytest

from scrape import scrape

from harness import IB, OPERATOR, SELF_BUILD_NAMESPACE, condition, diagnosis, eventually, image_build, registry_login, wait_ready
from registries import Client

# Run in the operator's container: who it is, whether it can write its root filesystem, where its credentials are.
INSIDE = """
import json, os
try:
    open("/kiln-was-here", "w")
    writable = True
except OSError:
    writable = False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "root_writable": writable,
                  "kubeconfig": os.environ.get("KUBECONFIG"),
                  "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")}))
"""


def test_the_operator_pod_is_ready_through_its_probes_as_65532_on_a_read_only_root_with_its_own_token(
        kubectl, operator):
    pod = operator.pod()
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz" and container["livenessProbe"]
    assert condition(pod, "Ready")["status"] == "True" and pod["status"]["containerStatuses"][0]["ready"]
    inside = kubectl("exec", f"--namespace={OPERATOR[0]}", pod["metadata"]["name"], "--", "python3", "-c", INSIDE)
    assert json.loads(inside.stdout) == {"uid": 65532, "gid": 65532, "root_writable": False, "kubeconfig": None,
                                         "token": True}
    assert scrape(operator.metrics)[("kiln_reconciles_in_progress", ())] >= 0  # /metrics, through its Service


@pytest.mark.skipif(bool(os.environ.get("KILN_E2E_ADDRESS")), reason="kiln builds kiln into the local cluster's registry")
def test_the_operator_runs_the_image_kiln_built_of_itself_from_this_checkout(kubectl, operator):
    built = kubectl.get(IB, "kiln", SELF_BUILD_NAMESPACE)
    assert operator.image == built["status"]["image"] != operator.bootstrap
    digest = built["status"]["digest"]
    assert operator.pod()["status"]["containerStatuses"][0]["imageID"].endswith(digest)
    assert built["spec"]["source"]["git"]["url"].endswith("/kiln/app.git")  # the test git server's copy of it


def test_a_build_the_deleted_operator_pod_started_is_finished_by_its_successor_with_one_job(
        kubectl, lab, namespace, operator):
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"}, "data": {
                      "Dockerfile": f"FROM {lab.base_image}\nRUN sleep 20 && echo slow > /slow\n"}},
                  namespace=namespace)
    kubectl.apply(image_build("slow", source={"configMap": {"name": "context"}},
                              output={"image": f"{lab.b.host}/team/slow", "tags": ["v1"]}), namespace=namespace)
    eventually(lambda: any(p["status"].get("phase") == "Running" for p in kubectl.items("pods", namespace)), 120,
               "the build pod runs", lambda: diagnosis(kubectl, namespace))
    first = operator.pod()["metadata"]["name"]
    kubectl("delete", "pod", first, f"--namespace={OPERATOR[0]}", "--wait=false")
    successor = eventually(lambda: (pod := operator.pod())["metadata"]["name"] != first and pod, 300,
                           "a new operator pod is Ready", operator.tail)
    build = wait_ready(kubectl, namespace, "slow")
    jobs = kubectl.items("jobs", namespace, "kiln.dev/imagebuild=slow")
    assert [job["metadata"]["annotations"]["kiln.dev/attempt"] for job in jobs] == ["0"]
    assert build["status"]["digest"] == Client(lab.b, "carol").manifest("team/slow", "v1")[2]
    assert successor["metadata"]["name"] != first
