"""Runs last (by name): kiln installed for one namespace (manifests/namespaced/), with Roles only.

The cluster-wide ClusterRoleBinding goes; manifests/namespaced/, set to a namespace of this test and the
image of the session's operator, is applied over the cluster-wide install, as a user would switch: the
Deployment rolls to `kiln run --namespace=...` under the same ServiceAccount, and builds there. The real
authorizer decides: the build succeeds, the audit log shows nothing refused, and the operator may not
read a Secret of any other namespace.
"""
from __future__ import annotations

import json
import time

import yaml
from test_least_privilege import SERVICE_ACCOUNT, audit_events

from harness import IB, ROOT, Kubectl, condition, eventually, image_build, operator_pod, registry_login


def test_the_namespaced_install_builds_with_roles_only(kubectl: Kubectl, lab, operator, namespace):
    kubectl("delete", "clusterrolebinding", "kiln-operator")  # the cluster-wide grants are gone
    rendered = kubectl("kustomize", str(ROOT / "manifests" / "namespaced")).stdout.replace("team-a", namespace)
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] = operator.image
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    kubectl.apply(*objects)
    served = lambda: (pod := operator_pod(kubectl)) and f"--namespace={namespace}" in pod["spec"]["containers"][0]["args"]  # noqa: E731
    eventually(served, 300, "the operator pod serves the namespace alone", operator.tail)
    kubectl.apply(*registry_login("account-b", lab.b, "carol"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
                   "data": {"Dockerfile": "FROM scratch\nCOPY motd /motd\n", "motd": "one namespace\n"}},
                  namespace=namespace)
    kubectl.apply(image_build("app", source={"configMap": {"name": "context"}},
                              output={"image": f"{lab.b.host}/team/one-namespace", "tags": ["v1"]}), namespace=namespace)
    build = eventually(lambda: (b := kubectl.get(IB, "app", namespace)) and condition(b, "Ready").get("status") == "True"
                       and b, 300, "the build is Ready", operator.tail)
    assert build["status"]["digest"]
    cannot = kubectl("auth", "can-i", "get", "secrets", "--namespace=default", f"--as={SERVICE_ACCOUNT}", check=False)
    assert cannot.stdout.strip() == "no"
    since = audit_events(started)
    refused = sorted({(e.get("objectRef") or {}).get("resource", "") + " " + e["verb"] for e in since
                      if (e.get("responseStatus") or {}).get("code") == 403})
    assert since and refused == [], json.dumps(refused)
