"""The exact build command the operator renders, run against a real BuildKit daemon and real registries.

The daemon is BuildKit's buildkitd at the pinned version (`make test` builds it from its Go
module and puts it on PATH; this module starts it as root), or whatever BUILDKIT_HOST points
at. Without either the tier is skipped with the reason printed, unless KILN_REQUIRE_BUILDKIT
is set (CI sets it): then it fails. Only the daemon address and the pod's mounted paths are
translated: every other argument is the rendered Job's.
"""
import asyncio
import base64
import functools
import json
import os
import shutil
import subprocess
import time

import pytest
from cluster.images import busybox_layer

from kiln.build.credentials import Credentials, ResolvedLogin
from kiln.build.outcomes import FAILED, UnitState, cache_stats, classify_failure, excerpt, sbom_generator_failure
from kiln.build.platforms import BuildUnit, build_plan
from kiln.build.render import BUILD_SCRIPT, CONTEXT_DIR, GIT_AUTH_DIR, METADATA_FILE, render_build_secret, render_job
from kiln.clients.cosign import SigningKey, Target, sign
from kiln.clients.registry import Registry, RegistryClient, assemble_index
from kiln.spec import reasons
from kiln.spec.parse import parse_image_build
from kiln.spec.references import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES
from kiln.spec.settings import Settings

from gitserver import GitServer, make_repository
from registries import PROVENANCE, SPDX, Client, free_port, push_image, read_manifest, wait_for_port
from supply_chain import attestations_of, cosign_binary, key_pair, push_generator, verify

pytestmark = [pytest.mark.buildkit, pytest.mark.registry]
PLATFORMS = ["linux/amd64", "linux/arm64"]


def _answers(address: str) -> str | None:
    """None when the daemon at address answers, else why not."""
    probe = subprocess.run(["buildctl", "--addr", address, "debug", "workers"], capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"BuildKit at {address} does not answer: {probe.stderr.strip()[:200]}"


def _missing() -> str | None:
    if not shutil.which("buildctl"):
        return "buildctl is not on PATH (make test builds it from BuildKit's Go module)"
    if not os.environ.get("BUILDKIT_HOST") and not shutil.which("buildkitd"):
        return "no BUILDKIT_HOST and no buildkitd on PATH (make test builds it from BuildKit's Go module)"
    if not os.environ.get("BUILDKIT_HOST") and os.geteuid() != 0:
        return "buildkitd is started as root here; run as root or set BUILDKIT_HOST"
    return None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    problem = _missing()
    if problem:
        if os.environ.get("KILN_REQUIRE_BUILDKIT"):
            pytest.fail(f"the buildkit tier must run here (KILN_REQUIRE_BUILDKIT): {problem}")
        print(f"\nSKIPPED buildkit tier: {problem}")
        pytest.skip(problem)
    if os.environ.get("BUILDKIT_HOST"):
        address = os.environ["BUILDKIT_HOST"]
        problem = _answers(address)
        assert problem is None, problem
        yield address
        return
    root = tmp_path_factory.mktemp("buildkitd")
    address = f"unix://{root}/buildkitd.sock"
    with (root / "buildkitd.log").open("wb") as log:
        process = subprocess.Popen(["buildkitd", f"--root={root}/state", f"--addr={address}"], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if process.poll() is not None or _answers(address) is None:
                break
            time.sleep(0.2)
        assert _answers(address) is None, (root / "buildkitd.log").read_text()[-3000:]
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def build_spec(name: str, image: str, context_path: str, cache: dict | None = None, tags=("v1",)) -> dict:
    spec = {"source": {"volume": {"claimName": "workspace", "path": context_path}},
            "output": {"image": image, "tags": list(tags)}, "platforms": PLATFORMS}
    if cache:
        spec["cache"] = cache
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "generation": 1}, "spec": spec}


def run_rendered(daemon: str, obj: dict, logins: list[ResolvedLogin], workspace, tmp_path,
                 git_files: dict[str, str] | None = None, expect_failure: bool = False) -> list[tuple[BuildUnit, dict, str]]:
    """Render the Jobs for obj and run each container's arguments with buildctl: [(unit, metadata, build log)]."""
    spec = parse_image_build(obj)
    plan = build_plan(spec)
    docker_dir, git_dir = tmp_path / f"docker-{spec.name}", tmp_path / f"git-{spec.name}"
    docker_dir.mkdir()
    git_dir.mkdir()
    secret = render_build_secret(spec, logins)
    (docker_dir / "config.json").write_bytes(base64.b64decode(secret["data"][".dockerconfigjson"]))
    for name, text in (git_files or {}).items():  # what the pod mounts from the git Secret
        (git_dir / name).write_text(text)
        (git_dir / name).chmod(0o600)
    results = []
    for unit in plan:
        job = render_job(spec, unit, Settings())
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["/bin/sh", "-c", BUILD_SCRIPT, "kiln-build"]
        metadata_file = tmp_path / f"metadata-{job['metadata']['name']}.json"
        paths = {CONTEXT_DIR: str(workspace), METADATA_FILE: str(metadata_file), GIT_AUTH_DIR: str(git_dir)}
        args = [functools.reduce(lambda arg, item: arg.replace(*item), paths.items(), a) for a in container["args"]]
        result = subprocess.run(["buildctl", "--addr", daemon, *args], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "DOCKER_CONFIG": str(docker_dir)})
        if expect_failure:
            assert result.returncode != 0
            results.append((unit, {}, result.stderr))
            continue
        assert result.returncode == 0, result.stderr[-3000:]
        results.append((unit, json.loads(metadata_file.read_text()), result.stderr))
    return results


async def test_rendered_build_pulls_from_one_registry_pushes_an_index_to_another_and_reuses_its_cache(
        daemon, basic_registry, second_basic_registry, tmp_path):
    a, b = basic_registry, second_basic_registry
    logins = [ResolvedLogin("account-a", a.host, Credentials("alice", a.users["alice"])),
              ResolvedLogin("account-b", b.host, Credentials("carol", b.users["carol"]))]
    workspace = tmp_path / "workspace"
    (workspace / "base").mkdir(parents=True)
    (workspace / "base" / "hello.txt").write_text("the private base image\n")
    (workspace / "base" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    (workspace / "app").mkdir()
    (workspace / "app" / "deploy.sh").write_text("echo deploy\n")
    (workspace / "app" / "application.jar").write_text("jar bytes\n")
    (workspace / "app" / "Dockerfile").write_text(
        f"FROM {a.host}/hub-mirrors/base:v1\nCOPY deploy.sh deploy.sh\nCOPY application.jar app.jar\n")

    # The private FROM image in registry A (account A), built the same way.
    run_rendered(daemon, build_spec("base", f"{a.host}/hub-mirrors/base", "base", {"type": "none"}), logins[:1],
                 workspace, tmp_path)
    # The app: FROM A, pushed to B (account B), registry cache at <image>:build-cache in B.
    app = build_spec("app", f"{b.host}/yunxiao-demo/app1", "app", tags=("2024-09-19-12-24-56", "v1"))
    [(_, first, _)] = run_rendered(daemon, app, logins, workspace, tmp_path)

    media_type, index, digest = await asyncio.to_thread(read_manifest, b, "carol", "yunxiao-demo/app1", "v1")
    assert digest == first["containerimage.digest"]
    _, _, other_tag = await asyncio.to_thread(read_manifest, b, "carol", "yunxiao-demo/app1", "2024-09-19-12-24-56")
    assert other_tag == digest  # every tag in one export
    platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
                 if m["platform"]["os"] != "unknown"}
    assert platforms == set(PLATFORMS)
    assert media_type in INDEX_MEDIA_TYPES
    await asyncio.to_thread(read_manifest, b, "carol", "yunxiao-demo/app1", "build-cache")

    # Fresh daemon state: only the registry cache can make the second build's steps cached.
    subprocess.run(["buildctl", "--addr", daemon, "prune", "--all"], check=True, capture_output=True, timeout=120)
    (workspace / "app" / "application.jar").write_text("a new jar\n")  # the last COPY changes, deploy.sh does not
    [(_, _, log)] = run_rendered(daemon, build_spec("app2", f"{b.host}/yunxiao-demo/app1", "app"), logins, workspace, tmp_path)
    cached, total = cache_stats(log)
    assert total > 0 and 0 < cached < total, log[-3000:]


async def test_rendered_build_clones_a_private_git_repository_with_its_token(daemon, second_basic_registry, tmp_path):
    registry, token = second_basic_registry, "gitea-Token-7"
    make_repository(tmp_path / "git", {"services/api/Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n",
                                       "services/api/hello.txt": "from git\n"})
    server = GitServer(tmp_path / "git", token)
    try:
        obj = {"metadata": {"name": "from-git", "namespace": "default", "uid": "uid-git", "generation": 1},
               "spec": {"source": {"git": {"url": server.url, "revision": "main", "secretRef": {"name": "git-token"}},
                                   "contextDir": "services/api"},
                        "output": {"image": f"{registry.host}/team/from-git", "tags": ["v1"]}, "cache": {"type": "none"}}}
        logins = [ResolvedLogin("account-b", registry.host, Credentials("carol", registry.users["carol"]))]
        [(_, metadata, _)] = run_rendered(daemon, obj, logins, tmp_path, tmp_path, git_files={"token": token})
    finally:
        server.shutdown()
    _, _, digest = await asyncio.to_thread(read_manifest, registry, "carol", "team/from-git", "v1")
    assert digest == metadata["containerimage.digest"]
    assert server.authorized > 0  # the token reached the git server, with its port in the secret's name


async def test_rendered_native_pods_push_by_digest_and_kiln_assembles_one_index(daemon, second_basic_registry, tmp_path):
    registry = second_basic_registry
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /app.txt\n")
    (tmp_path / "app" / "app.txt").write_text("native\n")
    obj = build_spec("native", f"{registry.host}/team/native", "app", {"type": "none"})
    obj["spec"].update(multiArch={"strategy": "native"}, output={"image": f"{registry.host}/team/native", "tags": ["v1", "latest"]})
    login = ResolvedLogin("account-b", registry.host, Credentials("carol", registry.users["carol"]))
    results = run_rendered(daemon, obj, [login], tmp_path, tmp_path)
    assert [unit.arch for unit, _, _ in results] == ["amd64", "arm64"]
    children = [(unit.platforms[0], metadata["containerimage.digest"]) for unit, metadata, _ in results]
    async with RegistryClient(Registry(registry.host, insecure=True), login.credentials) as client:
        # What the operator does once every pod is done.
        digest, images = await assemble_index(client, "team/native", children, ("v1", "latest"))
    assert [i.platform for i in images] == ["linux/amd64", "linux/arm64"]
    assert [i.attestation.predicate_types for i in images] == [(PROVENANCE,)] * 2  # provenance is on by default
    for tag in ("v1", "latest"):
        media_type, index, tagged = await asyncio.to_thread(read_manifest, registry, "carol", "team/native", tag)
        assert tagged == digest
        # The index is of the kind its children are (BuildKit pushes OCI manifests by default).
        assert media_type == index["mediaType"] and {m["mediaType"] for m in index["manifests"]} <= set(MANIFEST_MEDIA_TYPES)
        assert [(m["platform"]["architecture"], m["digest"]) for m in index["manifests"]] == \
               [(i.platform.split("/")[1], i.digest) for i in images] + [("unknown", i.attestation.digest) for i in images]


@pytest.fixture
def ssh_server(tmp_path):
    """sshd on 127.0.0.1 accepting one throwaway key: a private git host reached over ssh://."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or os.geteuid() != 0:
        pytest.skip("sshd (Debian's openssh-server) and root are needed to serve git over SSH")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    (keys / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {keys / 'sshd.pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    process = subprocess.Popen([sshd, "-D", "-f", str(keys / "sshd_config"), "-E", str(keys / "sshd.log")])
    try:
        wait_for_port(port, process, keys / "sshd.log")
        yield port, (keys / "client").read_text()
        assert "Accepted publickey for root" in (keys / "sshd.log").read_text()  # the clone came through sshd
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_rendered_build_clones_a_private_git_repository_over_ssh(daemon, ssh_server, second_basic_registry, tmp_path):
    port, private_key = ssh_server
    registry = second_basic_registry
    bare = make_repository(tmp_path / "git", {"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n", "hello.txt": "ssh\n"})
    obj = {"metadata": {"name": "from-ssh", "namespace": "default", "uid": "uid-ssh", "generation": 1},
           "spec": {"source": {"git": {"url": f"ssh://root@127.0.0.1:{port}{bare}", "revision": "main",
                                       "secretRef": {"name": "git-ssh"}}},
                    "output": {"image": f"{registry.host}/team/from-ssh", "tags": ["v1"]}, "cache": {"type": "none"}}}
    logins = [ResolvedLogin("account-b", registry.host, Credentials("carol", registry.users["carol"]))]
    [(_, metadata, _)] = run_rendered(daemon, obj, logins, tmp_path, tmp_path, git_files={"ssh-privatekey": private_key})
    _, _, digest = await asyncio.to_thread(read_manifest, registry, "carol", "team/from-ssh", "v1")
    assert digest == metadata["containerimage.digest"]


async def test_native_pods_attest_provenance_and_an_sbom_and_the_assembled_index_is_signed(
        daemon, basic_registry, tmp_path):
    """Each pod's provenance names this build and the FROM image by digest, with the build arguments (max); the
    SBOM from the generator image lists the base image's busybox; the index kiln assembles carries both, and the
    signature kiln makes of it verifies with cosign."""
    registry = basic_registry
    login = ResolvedLogin("account-a", registry.host, Credentials("alice", registry.users["alice"]))
    platforms = ["linux/amd64", "linux/arm64"]
    base_index, _ = await asyncio.to_thread(push_image, registry, "alice", "library/busybox", platforms, tag="1.35",
                                            layers={p: busybox_layer(p.split("/")[1]) for p in platforms})
    generator = await asyncio.to_thread(push_generator, registry, "alice", "tools/sbom", ["linux/amd64"])
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(f"FROM {registry.host}/library/busybox:1.35\nARG VERSION\n"
                                                 "LABEL version=$VERSION\nCOPY app.txt /app.txt\n")
    (tmp_path / "app" / "app.txt").write_text("attested\n")
    obj = build_spec("attested", f"{registry.host}/team/attested", "app", {"type": "none"})
    obj["spec"].update(multiArch={"strategy": "native"}, buildArgs={"VERSION": "1.2.3"},
                       attestations={"provenance": "max", "sbom": {"generator": generator}})
    results = run_rendered(daemon, obj, [login], tmp_path, tmp_path)
    children = [(unit.platforms[0], metadata["containerimage.digest"]) for unit, metadata, _ in results]
    async with RegistryClient(Registry(registry.host, insecure=True), login.credentials) as client:
        digest, images = await assemble_index(client, "team/attested", children, ("v1",))
    assert [(i.platform, set(i.attestation.predicate_types)) for i in images] == [(p, {PROVENANCE, SPDX}) for p in platforms]

    _, index, _ = await asyncio.to_thread(read_manifest, registry, "alice", "team/attested", "v1")
    found = await asyncio.to_thread(attestations_of, Client(registry, "alice"), "team/attested", index)
    spec = parse_image_build(obj)
    for platform in platforms:
        provenance = found[platform][PROVENANCE]
        assert provenance["runDetails"]["builder"]["id"] == \
            f"kiln://cluster.local/namespaces/default/imagebuilds/attested/builds/{spec.build_id}"
        base = [m for m in provenance["buildDefinition"]["resolvedDependencies"] if "library/busybox" in m["uri"]]
        assert base and base[0]["digest"]["sha256"]  # the FROM image, by digest
        assert provenance["buildDefinition"]["externalParameters"]["request"]["args"]["build-arg:VERSION"] == "1.2.3"
        packages = {p["name"] for p in found[platform][SPDX]["packages"]}
        assert "busybox" in packages, packages

    keys = key_pair(tmp_path / "keys", "Passw0rd-x")
    image = f"{registry.host}/team/attested@{digest}"
    config = {"auths": {registry.host: {"username": "alice", "password": registry.users["alice"]}}}
    await sign(cosign_binary(), Target(image, config, insecure=True), SigningKey(keys.private, keys.password))
    docker = tmp_path / "docker-verify"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps(config))
    checked = verify(image, keys.public, tmp_path, docker, insecure=True)
    assert checked.returncode == 0, checked.stderr


async def test_an_sbom_generator_that_cannot_be_pulled_is_named_as_the_failure(daemon, basic_registry, tmp_path):
    registry = basic_registry
    login = ResolvedLogin("account-a", registry.host, Credentials("alice", registry.users["alice"]))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /app.txt\n")
    (tmp_path / "app" / "app.txt").write_text("x\n")
    obj = build_spec("no-generator", f"{registry.host}/team/no-generator", "app", {"type": "none"})
    generator = f"{registry.host}/tools/missing:1"
    obj["spec"].update(platforms=["linux/amd64"], attestations={"sbom": {"generator": generator}})
    [(_, _, log)] = run_rendered(daemon, obj, [login], tmp_path, tmp_path, expect_failure=True)
    reason, _, summary = classify_failure(log)
    state = sbom_generator_failure(UnitState(FAILED, reason, summary, log_excerpt=excerpt(log)), generator)
    assert (state.reason, state.retryable) == (reasons.SBOM_GENERATOR_FAILED, False), log[-2000:]
    assert state.message.startswith(f"the SBOM generator image {generator} could not be pulled")
