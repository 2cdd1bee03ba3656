"""The real API server enforces the CRDs: every malformed spec of the unit tier's table is refused at
`kubectl apply`, with the message that table expects (so crdcheck.py's emulation holds), and the
CRDs document themselves for `kubectl explain` and `kubectl get`."""
from __future__ import annotations

import json

import pytest

from malformed import BUILD, LOGIN, MALFORMED_BUILDS, MALFORMED_LOGINS, changed

CASES = [pytest.param(BUILD, c, e, id=f"ImageBuild-{i}") for i, c, e in MALFORMED_BUILDS] + \
        [pytest.param(LOGIN, c, e, id=f"RegistryLogin-{i}") for i, c, e in MALFORMED_LOGINS]


@pytest.mark.parametrize(("base", "changes", "expected"), CASES)
def test_the_api_server_refuses_a_malformed_spec_with_the_expected_message(kubectl, operator, base, changes, expected):
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(changed(base, **changes)), check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr or result.stdout


def test_kubectl_explain_documents_the_fields(kubectl, operator):
    explained = kubectl("explain", "imagebuild.spec.cache.ref").stdout
    assert "<image>:build-cache" in explained or "build-cache" in explained
    assert "DESCRIPTION" in kubectl("explain", "registrylogin.spec.server").stdout


def test_kubectl_get_shows_phase_image_platforms_digest_duration_and_age(kubectl, namespace):
    build = {**BUILD, "metadata": {"name": "app"}, "spec": {**BUILD["spec"], "suspend": True,
                                                             "platforms": ["linux/amd64", "linux/arm64"]}}
    kubectl.apply(build, namespace=namespace)
    header, *rows = kubectl("get", "ib", f"--namespace={namespace}").stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "IMAGE", "PLATFORMS", "DIGEST", "DURATION", "AGE"]
    assert rows[0].split()[:1] == ["app"]
