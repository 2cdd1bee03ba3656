"""Runs last (by name): the operator's every request, as the API server's audit log recorded it.

The operator ran as its ServiceAccount with the ClusterRole in manifests/base/20-rbac.yaml through the
whole e2e session. The real authorizer refused nothing (sufficient), and every rule was used
(necessary), by the user stories and failure paths the other e2e modules exercise.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from harness import ROOT

SERVICE_ACCOUNT = "system:serviceaccount:kiln-system:kiln-operator"
# Checked inside admission, not asked for: the local API server runs OwnerReferencesPermissionEnforcement, which
# refuses a child with blockOwnerDeletion unless its creator may update the owner's finalizers. Every build
# in this session created such children, so without this rule none would have started.
USED_BY_ADMISSION = {("kiln.dev", "imagebuilds/finalizers", "update")}


def audit_events(since: str) -> list[dict]:
    """What the operator's ServiceAccount asked for since `since` (UTC), as the API server's audit log has it."""
    log = Path(os.environ.get("KILN_CLUSTER_DIR", "/var/lib/kiln-cluster")) / "logs" / "audit.log"
    if not log.exists():
        pytest.skip(f"no API server audit log at {log}: only the local cluster (make cluster) writes one")
    return [event for line in log.read_text().splitlines() if line for event in [json.loads(line)]
            if event.get("user", {}).get("username") == SERVICE_ACCOUNT and event.get("stageTimestamp", "") >= since]


def _resource(event: dict) -> tuple[str, str, str]:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"]


def test_the_authorizer_refused_the_operator_nothing(operator):
    """A create in a namespace being deleted is refused too (403), by the namespace's lifecycle, not the authorizer:
    a test's namespace goes while kiln may still be finishing a build there."""
    refused = sorted({(*_resource(e), (e.get("responseStatus") or {}).get("message", ""))
                      for e in audit_events(operator.started) if (e.get("responseStatus") or {}).get("code") == 403})
    assert [r for r in refused if "because it is being terminated" not in r[3]] == []


def test_every_rule_the_operator_is_granted_was_used(operator):
    used = {_resource(e) for e in audit_events(operator.started) if (e.get("responseStatus") or {}).get("code", 200) < 400
            or (e.get("responseStatus") or {}).get("code") in (404, 409)}
    (role,) = [doc for doc in yaml.safe_load_all((ROOT / "manifests" / "base" / "20-rbac.yaml").read_text()) if doc["kind"] == "ClusterRole"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert sorted(granted - used - USED_BY_ADMISSION) == []


def test_every_list_and_watch_of_jobs_pods_and_secrets_asked_the_api_server_to_filter(operator):
    """kiln's memory and work follow its own objects: the API server sends it no other Job, Pod or Secret."""
    collections = [e for e in audit_events(operator.started) if e["verb"] in ("list", "watch")
                   and (e.get("objectRef") or {}).get("resource") in ("jobs", "pods", "secrets")]
    assert {e["objectRef"]["resource"] for e in collections} == {"jobs", "pods", "secrets"}
    unfiltered = sorted({e["requestURI"] for e in collections if "labelSelector=" not in e["requestURI"]})
    assert unfiltered == []
