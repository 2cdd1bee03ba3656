"""Runs last (by name): kiln installed for one namespace (manifests/namespaced/), with Roles only.

The cluster-wide operator and its ClusterRoleBinding go; the namespaced install goes on for a namespace
of this test; the operator runs as the same ServiceAccount with `--namespace`, and builds there. The
real authorizer decides: the build succeeds, the audit log shows nothing refused, and the operator may
not read a Secret of any other namespace.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import yaml
from test_least_privilege import SERVICE_ACCOUNT, audit_events

from harness import IB, ROOT, Kubectl, condition, eventually, image_build, operator_env, registry_login


def test_the_namespaced_install_builds_with_roles_only(kubectl: Kubectl, lab, operator, namespace, tmp_path):
    operator.process.terminate()  # the cluster-wide operator, and its cluster-wide grants, are gone
    operator.process.wait(timeout=30)
    kubectl("delete", "clusterrolebinding", "kiln-operator")
    rendered = kubectl("kustomize", str(ROOT / "manifests" / "namespaced")).stdout.replace("team-a", namespace)
    kubectl.apply(*[doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] in (
        "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")])
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    log = tmp_path / "operator.log"
    env = operator_env(kubectl, tmp_path)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kiln", "run", f"--namespace={namespace}", "--standalone"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        kubectl.apply(*registry_login("account-b", lab.b, "carol"),
                      {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
                       "data": {"Dockerfile": "FROM scratch\nCOPY motd /motd\n", "motd": "one namespace\n"}},
                      namespace=namespace)
        kubectl.apply(image_build("app", source={"configMap": {"name": "context"}},
                                  output={"image": f"{lab.b.host}/team/one-namespace", "tags": ["v1"]}), namespace=namespace)
        build = eventually(lambda: (b := kubectl.get(IB, "app", namespace)) and condition(b, "Ready").get("status") == "True"
                           and b, 300, "the build is Ready", lambda: log.read_text()[-3000:])
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert build["status"]["digest"]
    cannot = kubectl("auth", "can-i", "get", "secrets", "--namespace=default", f"--as={SERVICE_ACCOUNT}", check=False)
    assert cannot.stdout.strip() == "no"
    since = audit_events(started)
    refused = sorted({(e.get("objectRef") or {}).get("resource", "") + " " + e["verb"] for e in since
                      if (e.get("responseStatus") or {}).get("code") == 403})
    assert since and refused == [], json.dumps(refused)
