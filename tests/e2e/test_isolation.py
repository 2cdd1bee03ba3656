"""What a namespace's users can reach through kiln on a real cluster: a RUN step that looks everywhere for
credentials, Secrets that have not opted in, and the shipped admission policy and NetworkPolicy."""
from __future__ import annotations

import json

import pytest

from gitserver import make_repository
from harness import (
    GIT_TOKEN,
    IB,
    ROOT,
    build_secret,
    condition,
    eventually,
    image_build,
    layer_files,
    registry_login,
    wait_ready,
)
from registries import Client

DB_PASSWORD = "db-Secret-pw7-never-in-an-image"
# Runs as the RUN step of a build, in BuildKit's container for it: everything a RUN step can list, read or try
# goes into /probe, which the image keeps for the test to search.
PROBE = r"""set +e
mkdir -p /probe && cd /probe
env > env.txt; id > id.txt; cat /proc/self/status > status.txt; cat /proc/self/mountinfo > mountinfo.txt
for p in /proc/[0-9]*; do
  n=${p#/proc/}
  cat $p/cmdline 2>&1 | tr '\0' ' ' > $n.cmdline
  cat $p/environ 2>&1 | tr '\0' '\n' > $n.environ
  ls -laR $p/root/kiln $p/root/run $p/root/home > $n.root 2>&1
  for f in $(find $p/root/kiln $p/root/run $p/root/home -type f 2>/dev/null); do cat $f; done > $n.files 2>&1
  ls -la $p/cwd/ > $n.cwd 2>&1
  dd if=$p/mem bs=4096 count=1 skip=16 > $n.mem 2>&1
done
for f in /kiln/docker/config.json /kiln/git/password /kiln/secrets/0/value /run/secrets/db /root/.docker/config.json; do
  echo "== $f"; cat $f
done > direct.txt 2>&1
ls -la /run/user/1000/buildkit /run/buildkit /home/user/.local/share/buildkit > socket.txt 2>&1
find / -xdev \( -name config.json -o -name '*.sock' -o -name 'password' -o -name 'value' \) > found.txt 2>&1
true
"""
DOCKERFILE = """FROM {base}
COPY probe.sh /probe.sh
RUN sh /probe.sh
RUN --mount=type=secret,id=db test -s /run/secrets/db
"""


def _image_text(client: Client, repository: str, tag: str) -> dict[str, dict[str, bytes]]:
    """platform -> every file of every layer of that platform's image."""
    _, index, _ = client.manifest(repository, tag)
    found = {}
    for entry in index["manifests"]:
        platform = entry.get("platform") or {}
        if platform.get("os") == "unknown":
            continue
        manifest = client.manifest(repository, entry["digest"])[1]
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            files.update(layer_files(client.blob(repository, layer["digest"])))
        found[f"{platform['os']}/{platform['architecture']}"] = files
    return found


def test_a_run_step_that_looks_everywhere_finds_no_credential_emulated_native_user_namespaced_or_warm(
        kubectl, lab, namespace):
    make_repository(lab.repositories / namespace, {"Dockerfile": DOCKERFILE.format(base=lab.base_image),
                                                  "probe.sh": PROBE})
    url = lab.git.url.replace("/app.git", f"/{namespace}/app.git")
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  build_secret("git-token", "x-access-token", GIT_TOKEN),
                  {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "db", "annotations": {"kiln.dev/image-builds": "emulated, native, userns, warm"}},
                   "stringData": {"password": DB_PASSWORD}}, namespace=namespace)
    spec = {"source": {"git": {"url": url, "revision": "main", "secretRef": {"name": "git-token"}}},
            "secrets": [{"id": "db", "secretRef": {"name": "db", "key": "password"}}],
            "platforms": ["linux/amd64", "linux/arm64"], "cache": {"type": "none"}}
    kubectl.apply(image_build("emulated", **spec, multiArch={"strategy": "qemu"},
                              output={"image": f"{lab.b.host}/team/probe-emulated", "tags": ["v1"]}),
                  image_build("native", **spec, multiArch={"strategy": "native"},
                              output={"image": f"{lab.b.host}/team/probe-native", "tags": ["v1"]}),
                  image_build("userns", **spec, multiArch={"strategy": "qemu"}, builder={"userNamespaces": True},
                              output={"image": f"{lab.b.host}/team/probe-userns", "tags": ["v1"]}),
                  image_build("warm", **spec, multiArch={"strategy": "qemu"}, builder={"warm": True},
                              output={"image": f"{lab.b.host}/team/probe-warm", "tags": ["v1"]}), namespace=namespace)
    secrets = [lab.a.users["alice"], lab.b.users["carol"], GIT_TOKEN, DB_PASSWORD]
    client = Client(lab.b, "carol")
    for name in ("emulated", "native", "userns", "warm"):
        wait_ready(kubectl, namespace, name, timeout=900)
        images = _image_text(client, f"team/probe-{name}", "v1")
        assert sorted(images) == ["linux/amd64", "linux/arm64"]
        for platform, files in images.items():
            probe = {path.removeprefix("probe/"): text for path, text in files.items() if path.startswith("probe/")}
            everything = b"\n".join(probe.values())
            assert not [s for s in secrets if s.encode() in everything], f"{name} {platform}: a credential was found"
            commands = b" ".join(text for path, text in probe.items() if path.endswith(".cmdline"))
            if name in ("userns", "warm"):  # BuildKit's process sandbox: the step has a PID namespace of its own
                assert b"sh /probe.sh" in probe["1.cmdline"], platform
                assert b"buildkitd" not in commands and b"buildctl" not in commands, platform
            else:  # it did look: the build's processes and their command lines are listed, their insides are not
                assert b"buildkitd" in commands and b"buildctl" in commands, (name, platform)
            environs = [text for path, text in probe.items() if path.endswith(".environ") and b"DOCKER_CONFIG" in text]
            assert environs == [], f"{name} {platform}: a RUN step read the daemon's environment"
            assert b"/kiln/docker/config.json" in probe["direct.txt"] and b'"auths"' not in probe["direct.txt"]


def test_a_secret_that_has_not_opted_in_is_not_mounted_and_the_build_says_why(kubectl, lab, namespace):
    kubectl.apply(*registry_login("account-a", lab.a, "alice"), *registry_login("account-b", lab.b, "carol"),
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
                   "data": {"Dockerfile": f"FROM {lab.base_image}\nRUN --mount=type=secret,id=db cat /run/secrets/db\n"}},
                  {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "db"},
                   "stringData": {"password": DB_PASSWORD}}, namespace=namespace)
    kubectl.apply(image_build("app", source={"configMap": {"name": "context"}}, cache={"type": "none"},
                              secrets=[{"id": "db", "secretRef": {"name": "db", "key": "password"}}],
                              output={"image": f"{lab.b.host}/team/app", "tags": ["v1"]}), namespace=namespace)
    build = eventually(lambda: (b := kubectl.get(IB, "app", namespace)) and condition(b, "Stalled").get("status") == "True"
                       and b, 60, "the build stalls")
    assert condition(build, "Stalled")["reason"] == "SecretNotOptedIn"
    assert kubectl.items("jobs", namespace) == [] and DB_PASSWORD not in json.dumps(build)
    kubectl("label", "secret", "db", "kiln.dev/build-secret=true", f"--namespace={namespace}")
    eventually(lambda: condition(kubectl.get(IB, "app", namespace), "Stalled").get("status") == "False", 120,
               "the label is seen (by the resync: no watch shows such Secrets), without an edit of the build")
    wait_ready(kubectl, namespace, "app", timeout=300)


@pytest.fixture
def limits_policy(kubectl):
    kubectl("apply", "-k", str(ROOT / "manifests" / "policy"))
    yield
    kubectl("delete", "-k", str(ROOT / "manifests" / "policy"), "--ignore-not-found")


def test_the_shipped_admission_policy_holds_builds_to_what_the_namespace_allows(kubectl, lab, namespace, limits_policy):
    kubectl("annotate", "namespace", namespace, "kiln.dev/allowed-volumes=buildkit-state",
            "kiln.dev/allowed-tolerations=dedicated", "kiln.dev/required-node-selectors=kiln.dev/pool=builds")
    base = {"source": {"git": {"url": "https://git.example/app.git"}},
            "output": {"image": f"{lab.b.host}/team/app", "tags": ["v1"]}, "suspend": True}
    pool = {"nodeSelector": {"kiln.dev/pool": "builds"}}
    refused = {
        "any-claim": ({**base, "cache": {"type": "local", "volume": {"claimName": "database-data"}}, "builder": pool},
                      "spec.cache.volume: claim database-data is not allowed in namespace"),
        "any-workspace": ({**base, "source": {"volume": {"claimName": "database-data"}}, "builder": pool},
                          "spec.source.volume: claim database-data is not allowed"),
        "every-taint": ({**base, "builder": {**pool, "tolerations": [{"operator": "Exists"}]}},
                        "a toleration must name a key (never every taint)"),
        "other-taint": ({**base, "builder": {**pool, "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
                        "the key must be listed in the namespace's annotation kiln.dev/allowed-tolerations"),
        "other-nodes": ({**base, "builder": {"nodeSelector": {"kiln.dev/pool": "builds", "zone": "db"}}},
                        "every key=value must be listed"),
        "no-pool": ({**base}, "spec.builder.nodeSelector must select kiln.dev/pool=builds"),
    }
    def refusal(name: str, spec: dict) -> str | None:
        """What the API server says to creating it (a dry run: admission runs, nothing is stored)."""
        result = kubectl("create", "-f", "-", "--dry-run=server", f"--namespace={namespace}", check=False,
                         input=json.dumps(image_build(name, **spec)))
        return result.stderr if result.returncode != 0 else None

    eventually(lambda: refusal("any-claim", refused["any-claim"][0]), 30, "the API server has loaded the policy")
    for name, (spec, message) in refused.items():
        said = refusal(name, spec)
        assert said and message in said, (name, said)
    allowed = {**base, "cache": {"type": "local", "volume": {"claimName": "buildkit-state"}},
               "builder": {**pool, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "builds",
                                                    "effect": "NoSchedule"}]}}
    kubectl.apply(image_build("allowed", **allowed), namespace=namespace)
    assert kubectl.get(IB, "allowed", namespace)["spec"]["builder"]["nodeSelector"] == {"kiln.dev/pool": "builds"}


def test_the_build_pods_network_policy_is_accepted_by_the_api_server(kubectl, namespace):
    """Its effect needs a network plugin that enforces NetworkPolicy, which the local cluster has not."""
    kubectl("apply", "-f", str(ROOT / "manifests" / "policy" / "build-pods-networkpolicy.yaml"), f"--namespace={namespace}")
    policy = kubectl.get("networkpolicy", "kiln-build-pods", namespace)
    assert policy["spec"]["policyTypes"] == ["Egress"]
