"""render: the exact objects the operator creates for every user story."""
import base64
import copy
import hashlib
import io
import json
import os
import re
import tomllib

import kubernetes_validate
import pytest
import yaml
from cluster.versions import KUBERNETES_MINOR

from kiln.build.credentials import Credentials, ResolvedLogin
from kiln.build.platforms import BuildUnit, build_plan
from kiln.build.render import buildctl_args, render_build, render_job
from kiln.cli import main as kiln_main
from kiln.render_cli import render_files, render_objects
from kiln.spec import references
from kiln.spec.parse import InvalidSpec, parse_image_build
from kiln.spec.settings import Settings

from conftest import ROOT, SAMPLES, load_yaml_docs
from crdcheck import schema_of

GOLDEN = ROOT / "tests" / "golden"
FIXTURES = ROOT / "tests" / "fixtures"
SETTINGS = Settings(buildkit_image="moby/buildkit:v0.34.2-rootless")
# story -> (files to read, ImageBuild to keep)
STORIES = {
    "two-registries": ([SAMPLES / "01-two-registries.yaml"], "app1"),
    "cache-vpc-registry": ([SAMPLES / "01-two-registries.yaml", SAMPLES / "02-cache-vpc-registry.yaml"], "app1-vpc-cache"),
    "local-cache": ([SAMPLES / "01-two-registries.yaml", SAMPLES / "03-local-cache.yaml"], "app1-local-cache"),
    "multiarch-qemu": ([SAMPLES / "01-two-registries.yaml", SAMPLES / "04-multiarch-qemu.yaml"], "app1-multiarch"),
    "multiarch-native": ([SAMPLES / "01-two-registries.yaml", SAMPLES / "05-multiarch-native.yaml"], "app1-native"),
    "workspace-volume": ([SAMPLES / "01-two-registries.yaml", SAMPLES / "06-workspace-volume.yaml"], "app1-from-workspace"),
    "git-private": ([FIXTURES / "git-private.yaml"], "private-app"),
    "quickstart": ([SAMPLES / "00-quickstart.yaml"], "hello"),
    "kiln-builds-kiln": ([SAMPLES / "00-quickstart.yaml", SAMPLES / "kiln-builds-kiln.yaml"], "kiln"),
    "supply-chain": ([SAMPLES / "00-quickstart.yaml", SAMPLES / "07-supply-chain.yaml"], "hello-signed"),
    "warm-builder": ([SAMPLES / "00-quickstart.yaml", SAMPLES / "08-warm-builder.yaml"], "hello-warm"),
}


def rendered_story(story: str) -> list[dict]:
    files, build = STORIES[story]
    objects = render_objects([str(f) for f in files] + [str(FIXTURES / "secrets.yaml")], SETTINGS)
    return [o for o in objects if o["metadata"]["labels"].get("kiln.dev/imagebuild", build) == build]  # builders: any


@pytest.mark.parametrize("story", sorted(STORIES))
def test_rendered_objects_match_the_golden_file(story):
    objects = rendered_story(story)
    golden = GOLDEN / f"{story}.yaml"
    if os.environ.get("KILN_UPDATE_GOLDEN"):
        golden.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    assert golden.exists(), f"no golden file; run KILN_UPDATE_GOLDEN=1 pytest {__file__}"
    assert objects == load_yaml_docs(golden)


@pytest.mark.parametrize("story", sorted(STORIES))
def test_rendered_objects_are_valid_kubernetes_objects(story):
    for obj in rendered_story(story):
        kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)


def _job(story: str, index: int = 0) -> dict:
    return [o for o in rendered_story(story) if o["kind"] == "Job"][index]


def _args(story: str, index: int = 0) -> list[str]:
    return _job(story, index)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_two_account_build_merges_both_logins_into_the_mounted_docker_config():
    secret = rendered_story("two-registries")[0]
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert sorted(config["auths"]) == ["registry.cn-beijing.aliyuncs.com", "registry.cn-hangzhou.aliyuncs.com"]
    assert base64.b64decode(config["auths"]["registry.cn-beijing.aliyuncs.com"]["auth"]) == b"user-a:pass-a"
    pod = _job("two-registries")["spec"]["template"]["spec"]
    assert {"name": "DOCKER_CONFIG", "value": "/kiln/docker"} in pod["containers"][0]["env"]
    assert pod["volumes"][1]["secret"]["secretName"] == secret["metadata"]["name"]


def test_cache_ref_defaults_to_output_image_build_cache_tag():
    args = _args("two-registries")
    repo = "registry.cn-hangzhou.aliyuncs.com/yunxiao-demo/app1"
    assert f"--export-cache=type=registry,ref={repo}:build-cache,mode=max,ignore-error=true" in args
    assert f"--import-cache=type=registry,ref={repo}:build-cache" in args


def test_cache_moves_to_the_vpc_address_with_its_login():
    args = _args("cache-vpc-registry")
    ref = "registry-vpc.cn-beijing.aliyuncs.com/hub-mirrors/openjdk:app1-flow-cache"
    assert [a for a in args if a.startswith(("--export-cache", "--import-cache"))] == [f"--export-cache=type=registry,ref={ref},mode=max,ignore-error=true",
                                                 f"--import-cache=type=registry,ref={ref}"]
    config = json.loads(base64.b64decode(rendered_story("cache-vpc-registry")[0]["data"][".dockerconfigjson"]))
    assert "registry-vpc.cn-beijing.aliyuncs.com" in config["auths"]


def test_local_cache_keeps_buildkit_state_on_the_volume_without_export():
    job = _job("local-cache")
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "buildkit-state", "persistentVolumeClaim": {"claimName": "buildkit-state-app1"}}
    assert pod["containers"][0]["volumeMounts"][0] == {"name": "buildkit-state", "mountPath": "/home/user/.local/share/buildkit"}
    assert not [a for a in _args("local-cache") if a.startswith(("--export-cache", "--import-cache"))]
    assert job["metadata"]["labels"]["kiln.dev/cache-volume"] == "buildkit-state-app1"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "kiln.dev/builder": "dedicated"}


def test_every_native_pod_attaches_provenance_naming_this_build_and_an_sbom_from_the_named_generator():
    for index in (0, 1):
        attest = [a for a in _args("supply-chain", index) if "attest" in a or "SBOM" in a]
        assert attest == [
            "--opt=attest:provenance=mode=max,builder-id=kiln://cluster.local/namespaces/default/imagebuilds/hello-signed/builds/g1-17427c",
            "--opt=attest:sbom=generator=10.88.0.3:5000/mirror/buildkit-syft-scanner:stable-1"]


def test_provenance_is_min_by_default_off_on_request_and_the_sbom_generator_defaults_to_the_operators():
    doc = _fixture_build()
    settings = Settings(sbom_generator="mirror.example/scanner:1", builder_id="kiln://prod-eu")
    def attest(**attestations):
        doc["spec"]["attestations"] = attestations
        return [a for a in buildctl_args(parse_image_build(doc), BuildUnit(()), settings) if "attest" in a or "SBOM" in a]
    assert attest() == [f"--opt=attest:provenance=mode=min,builder-id=kiln://prod-eu/namespaces/team/imagebuilds/private-app/builds/{parse_image_build(doc).build_id}"]
    assert attest(provenance="off") == []
    assert attest(provenance="off", sbom={}) == ["--opt=attest:sbom=generator=mirror.example/scanner:1"]
    assert attest(provenance="off", sbom={"scanStages": True}) == ["--opt=attest:sbom=generator=mirror.example/scanner:1",
                                                                    "--opt=build-arg:BUILDKIT_SBOM_SCAN_STAGE=true"]


def test_the_signing_key_never_reaches_a_build_pod():
    job = _job("supply-chain")
    assert "cosign-key" not in json.dumps(job)
    assert {v.get("secret", {}).get("secretName") for v in job["spec"]["template"]["spec"]["volumes"]} <= {
        None, "hello-signed-g1-17427c-docker"}


def test_render_shows_the_signing_step_the_operator_runs_after_the_push():
    out, err = io.StringIO(), io.StringIO()
    files = [str(SAMPLES / "00-quickstart.yaml"), str(SAMPLES / "07-supply-chain.yaml")]
    assert render_files(files, show_secrets=False, out=out, err=err) == 0, err.getvalue()
    comments = [line for line in out.getvalue().splitlines() if line.startswith("#")]
    assert comments[-1] == ("#   COSIGN_KEY=<cosign.key> COSIGN_PASSWORD=<cosign.password> cosign sign --key env://COSIGN_KEY "
                            "--yes --use-signing-config=false --tlog-upload=false 10.88.0.3:5000/quickstart/hello-signed@<pushed digest>")
    assert "Secret cosign-key (never mounted in a build pod" in comments[-2]
    docs = list(yaml.safe_load_all(out.getvalue()))  # the comments keep the output applicable
    assert [d["kind"] for d in docs] == ["Secret", "Job", "Secret", "Job", "Job"]


def test_qemu_multiarch_builds_every_platform_in_one_pod_and_pushes_one_tag():
    jobs = [o for o in rendered_story("multiarch-qemu") if o["kind"] == "Job"]
    assert len(jobs) == 1
    args = _args("multiarch-qemu")
    assert "--opt=platform=linux/amd64,linux/arm64" in args
    assert '--output=type=image,"name=registry.cn-hangzhou.aliyuncs.com/yunxiao-demo/app1:multiarch",push=true' in args


def test_native_multiarch_runs_one_pod_per_architecture_pushing_by_digest():
    jobs = [o for o in rendered_story("multiarch-native") if o["kind"] == "Job"]
    assert [j["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] for j in jobs] == ["amd64", "arm64"]
    for job, platform in zip(jobs, ["linux/amd64", "linux/arm64"], strict=True):
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--opt=platform={platform}" in args
        assert any("push-by-digest=true" in a for a in args)
    caches = {a for j in jobs for a in j["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--export-cache")}
    assert len(caches) == 2  # parallel pods never write one cache ref


def test_workspace_volume_is_mounted_read_only_as_the_context():
    pod = _job("workspace-volume")["spec"]["template"]["spec"]
    assert {"name": "context", "persistentVolumeClaim": {"claimName": "workspace-app1", "readOnly": True}} in pod["volumes"]
    args = _args("workspace-volume")
    assert args[3:6] == ["--local=context=/kiln/context/spring-boot", "--local=dockerfile=/kiln/context/spring-boot",
                         "--opt=filename=Dockerfile"]
    assert "--opt=build-arg:JAR_FILE=target/application.jar" in args


def test_private_git_token_reaches_buildkit_as_a_secret_never_in_the_url():
    args = _args("git-private")
    assert "--opt=context=https://git.corp.example/team/private-app.git#v1.4.2:services/api" in args
    assert "--secret=id=GIT_AUTH_TOKEN.git.corp.example,src=/kiln/git/token" in args
    assert not any("token-value" in a for a in args)
    pod = _job("git-private")["spec"]["template"]["spec"]
    assert {"name": "git-auth", "secret": {"secretName": "git-token", "defaultMode": 0o440,
                                           "items": [{"key": "password", "path": "token"}]}} in pod["volumes"]


@pytest.mark.parametrize(("url", "secret_id"), [
    ("https://git.corp.example/team/app.git", "GIT_AUTH_TOKEN.git.corp.example"),
    ("https://gitea.corp.example:3000/team/app.git", "GIT_AUTH_TOKEN.gitea.corp.example:3000"),
])
def test_git_token_secret_is_named_for_the_host_and_port_buildkit_looks_up(url, secret_id):
    doc = _fixture_build()
    doc["spec"]["source"]["git"]["url"] = url
    assert f"--secret=id={secret_id},src=/kiln/git/token" in buildctl_args(parse_image_build(doc), BuildUnit(()), SETTINGS)


def test_insecure_and_private_ca_registries_get_a_buildkitd_config_in_the_build_secret():
    secret = next(o for o in rendered_story("git-private") if o["kind"] == "Secret")
    files = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert files["buildkitd.toml"] == (
        '[registry."registry.corp.example"]\n  ca = ["/kiln/buildkitd/ca-registry.corp.example.crt"]\n\n'
        '[registry."registry.kiln-system.svc:5000"]\n  http = true\n  insecure = true\n')
    assert "BEGIN CERTIFICATE" in files["ca-registry.corp.example.crt"]
    assert tomllib.loads(files["buildkitd.toml"]) == {"registry": {  # buildkitd's config structure
        "registry.corp.example": {"ca": ["/kiln/buildkitd/ca-registry.corp.example.crt"]},
        "registry.kiln-system.svc:5000": {"http": True, "insecure": True}}}
    pod = _job("git-private")["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"][0] == {
        "name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox --config=/kiln/buildkitd/buildkitd.toml"}
    mounted = next(v for v in pod["volumes"] if v["name"] == "buildkitd-config")["secret"]
    assert mounted["secretName"] == secret["metadata"]["name"]  # the docker config stays out of that directory
    assert mounted["items"] == [{"key": "buildkitd.toml", "path": "buildkitd.toml"},
                                {"key": "ca-registry.corp.example.crt", "path": "ca-registry.corp.example.crt"}]


def test_a_registry_with_nothing_special_needs_no_buildkitd_config():
    spec = parse_image_build(_fixture_build())
    login = ResolvedLogin("hub", "registry.example", Credentials("u", "p"))
    secret, job = render_build(spec, [login], (BuildUnit(()),), SETTINGS)
    assert list(secret["data"]) == [".dockerconfigjson"]
    assert "--config" not in json.dumps(job) and "buildkitd-config" not in json.dumps(job)


def test_a_ca_file_name_is_a_valid_secret_key_for_any_server():
    spec = parse_image_build(_fixture_build())
    login = ResolvedLogin("v6", "[fd00::1]:5000", Credentials("u", "p"), ca_pem="PEM")
    (secret,) = render_build(spec, [login], (), SETTINGS)
    assert "ca--fd00--1--5000.crt" in secret["data"]


def test_rootless_pod_is_never_privileged():
    for story in STORIES:
        for job in (o for o in rendered_story(story) if o["kind"] == "Job"):
            pod = job["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsUser"] == 1000
            assert "privileged" not in json.dumps(pod)
            assert pod["automountServiceAccountToken"] is False


def test_timeout_and_retries_map_to_the_job():
    job = _job("git-private")
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["backoffLimit"] == 0


def _fixture_build() -> dict:
    return copy.deepcopy(next(d for d in load_yaml_docs(FIXTURES / "git-private.yaml") if d["kind"] == "ImageBuild"))


def test_a_user_namespaced_pod_runs_buildkit_with_its_process_sandbox():
    obj = _fixture_build()
    obj["spec"]["builder"] = {"userNamespaces": True}
    secret, job = render_build(parse_image_build(obj), [], (BuildUnit(()),), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostUsers"] is False and container["securityContext"] == {"procMount": "Unmasked"}
    assert {"name": "BUILDKITD_FLAGS", "value": ""} in container["env"]
    # rootlesskit maps subordinate IDs inside the pod's 65536, not the image's from 100000
    assert base64.b64decode(secret["data"]["subid"]).decode() == "user:1:65535\n"
    assert [(m["mountPath"], m["subPath"]) for m in container["volumeMounts"] if m["name"] == "subordinate-ids"] == \
        [("/etc/subuid", "subid"), ("/etc/subgid", "subid")]
    for obj in (secret, job):
        kubernetes_validate.validate(obj, KUBERNETES_MINOR, strict=True)


def test_a_pod_in_the_nodes_user_namespace_runs_buildkit_without_the_process_sandbox():
    secret, job = render_build(parse_image_build(_fixture_build()), [], (BuildUnit(()),), SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"} in container["env"]
    assert "securityContext" not in container and "subid" not in secret["data"]


def test_every_build_has_its_own_deterministic_names():
    spec = parse_image_build(_fixture_build())
    assert render_build(spec, [], build_plan(spec), SETTINGS) == render_build(spec, [], build_plan(spec), SETTINGS)
    rebuilt = _fixture_build()
    rebuilt["metadata"]["annotations"] = {"kiln.dev/rebuild": "2026-11-28"}
    name = render_job(spec, BuildUnit(()), SETTINGS)["metadata"]["name"]
    assert render_job(parse_image_build(rebuilt), BuildUnit(()), SETTINGS)["metadata"]["name"] != name
    assert name == "private-app-g3-" + hashlib.sha256(b"6f1c2d8e-0000-4000-8000-000000000001/3/").hexdigest()[:6]


def test_suspend_and_history_limit_do_not_change_what_is_built():
    base = parse_image_build(_fixture_build())
    toggled = _fixture_build()
    toggled["spec"].update(suspend=True, historyLimit=9)
    assert parse_image_build(toggled).identity == base.identity
    changed = _fixture_build()
    changed["spec"]["source"]["git"]["revision"] = "v1.4.3"
    assert parse_image_build(changed).identity != base.identity
    rebuilt = _fixture_build()
    rebuilt["metadata"]["annotations"] = {"kiln.dev/rebuild": "again"}
    assert parse_image_build(rebuilt).identity != base.identity


def test_long_names_are_shortened_to_valid_label_values():
    doc = _fixture_build()
    doc["metadata"]["name"] = "a" * 200
    job = render_job(parse_image_build(doc), BuildUnit(("linux/arm64",), "arm64", "arm64"), SETTINGS, attempt=3)
    assert len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["name"].endswith("-arm64-r3")
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())


def test_crd_patterns_are_the_ones_the_operator_enforces():
    spec = schema_of("ImageBuild")["properties"]["spec"]["properties"]
    assert spec["output"]["properties"]["image"]["pattern"] == references.IMAGE_PATTERN
    assert spec["output"]["properties"]["tags"]["items"]["pattern"] == references.TAG_PATTERN
    assert spec["cache"]["properties"]["ref"]["pattern"] == references.TAGGED_REF_PATTERN
    assert spec["platforms"]["items"]["pattern"] == references.PLATFORM_PATTERN
    assert spec["attestations"]["properties"]["sbom"]["properties"]["generator"]["pattern"] == \
        references.IMAGE_REF_PATTERN


# -- injection: hostile values never change the pod's structure or its argument count --

HOSTILE = [
    "a\nb: c", "x\n---\nkind: Pod", "--output=type=local,dest=/", "$(rm -rf /)", "`id`", "'; echo pwned",
    '"quoted"', "a,push=false", "name=evil", "{{ .Values.x }}", "{% raw %}", "\\", "key: value", "- item",
    "#comment", "a b", "*alias", "&anchor", "!!python/object/apply:os.system", "${HOME}", "--secret=id=x,src=/etc/shadow",
]
FIELDS = {
    "buildArg value": lambda d, v: d["spec"].update(buildArgs={"A": v}),
    "buildArg name": lambda d, v: d["spec"].update(buildArgs={v: "1"}),
    "output.image": lambda d, v: d["spec"]["output"].update(image=v),
    "output.tag": lambda d, v: d["spec"]["output"].update(tags=[v]),
    "git.url": lambda d, v: d["spec"]["source"]["git"].update(url=f"https://git.example/{v}"),
    "git.revision": lambda d, v: d["spec"]["source"]["git"].update(revision=v),
    "contextDir": lambda d, v: d["spec"]["source"].update(contextDir=v),
    "dockerfile": lambda d, v: d["spec"]["source"].update(dockerfile=v),
    "target": lambda d, v: d["spec"].update(target=v),
    "cache.ref": lambda d, v: d["spec"]["cache"].update(ref=f"r.example/app:{v}"),
    "platform": lambda d, v: d["spec"].update(platforms=[v]),
    "secret id": lambda d, v: d["spec"].update(secrets=[{"id": v, "secretRef": {"name": "s", "key": "k"}}]),
}
BASE = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "namespace": "default", "uid": "u", "generation": 1},
        "spec": {"source": {"git": {"url": "https://git.example/app.git", "revision": "main"}},
                 "output": {"image": "r.example/app", "tags": ["v1"]}, "cache": {"type": "registry"},
                 "secrets": [{"id": "s", "secretRef": {"name": "s", "key": "k"}}],
                 "platforms": ["linux/amd64"], "target": "t", "buildArgs": {"A": "1"}}}


def _shape(obj):
    """The structure of an object: keys and list lengths, not the values."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__


def _option_names(args: list[str]) -> list[str]:
    return [re.match(r"^(--[a-z-]+=?[a-z-]*)", a).group(1) if a.startswith("--") else a for a in args]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_hostile_value_is_refused_or_stays_one_value(field, value):
    doc = copy.deepcopy(BASE)
    FIELDS[field](doc, value)
    try:
        spec = parse_image_build(doc)
    except InvalidSpec as exc:
        assert exc.field.startswith("spec.")
        return
    baseline = render_job(parse_image_build(BASE), BuildUnit(("linux/amd64",)), SETTINGS)
    job = render_job(spec, BuildUnit(spec.platforms), SETTINGS)
    assert _shape(job) == _shape(baseline)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    base_args = baseline["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _option_names(args) == _option_names(base_args)
    assert yaml.safe_load(yaml.safe_dump(job)) == job
    for arg in args:  # a value cannot open a new CSV field in buildctl's comma-separated options
        if arg.startswith(("--output=", "--export-cache=", "--import-cache=", "--secret=")):
            assert arg.count(",") == next(b for b in base_args if b.split("=")[0] == arg.split("=")[0]).count(",")


def test_injection_table_is_big_enough_to_mean_something():
    assert len(HOSTILE) >= 15 and len(FIELDS) >= 10


def test_build_arg_names_are_checked_by_the_operator():
    """The CRD cannot check map keys affordably, so the operator does, naming the field."""
    doc = copy.deepcopy(BASE)
    doc["spec"]["buildArgs"] = {"BAD-NAME": "x"}
    with pytest.raises(InvalidSpec) as caught:
        parse_image_build(doc)
    assert str(caught.value) == "spec.buildArgs.BAD-NAME: names must be letters, digits and underscores, not starting with a digit"


def test_build_arg_values_survive_byte_for_byte():
    for value in HOSTILE:
        doc = copy.deepcopy(BASE)
        doc["spec"]["buildArgs"] = {"A": value}
        assert f"--opt=build-arg:A={value}" in buildctl_args(parse_image_build(doc), BuildUnit(()), SETTINGS)


# -- kiln render --

def test_kiln_render_prints_every_object_with_credentials_redacted(capsys):
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", str(SAMPLES), "-f", str(FIXTURES / "secrets.yaml")])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    objects = list(yaml.safe_load_all(out))
    assert sum(o["kind"] == "Job" for o in objects) == 11  # nine samples, two native multi-arch ones of two pods
    assert "pass-a" not in out and "pass-b" not in out and "dXNlci1hOnBhc3MtYQ" not in out
    assert "kiln-local-registry" not in out  # the quick start's password, from stringData
    assert '"username": "user-a"' in out


def test_kiln_render_reads_stdin_for_a_dash(capsys, monkeypatch):
    text = (SAMPLES / "01-two-registries.yaml").read_text() + "\n---\n" + (FIXTURES / "secrets.yaml").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", "-"])
    assert exit_.value.code == 0
    assert [o["kind"] for o in yaml.safe_load_all(capsys.readouterr().out)] == ["Secret", "Job"]


def test_kiln_render_show_secrets_prints_the_real_config(capsys):
    with pytest.raises(SystemExit):
        kiln_main(["render", "--show-secrets", "-f", str(SAMPLES / "01-two-registries.yaml"), "-f", str(FIXTURES / "secrets.yaml")])
    secret = next(yaml.safe_load_all(capsys.readouterr().out))
    assert b"pass-b" in base64.b64decode(secret["data"][".dockerconfigjson"])


@pytest.mark.parametrize(("doc", "expected"), [
    ({"spec": {"source": {"git": {"url": "https://g/a.git"}}, "output": {"image": "R/App:1"}}},
     "bad.yaml: ImageBuild/app: spec.output.image: must be a repository without tag or digest"),
    ({"spec": {"source": {}, "output": {"image": "r.io/a"}}},
     "bad.yaml: ImageBuild/app: spec.source: exactly one of source.git"),
    ({"spec": {"registryLogins": ["nope"], "source": {"url": "https://e/c.tgz"}, "output": {"image": "r.io/a"}}},
     "bad.yaml: ImageBuild/app: RegistryLogin 'nope' named in spec.registryLogins does not exist"),
])
def test_kiln_render_names_the_file_and_field_of_bad_input(tmp_path, capsys, doc, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                                    "metadata": {"name": "app"}, **doc}))
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", str(path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_kiln_render_refuses_a_login_whose_secret_is_not_in_the_files(capsys):
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", str(SAMPLES / "01-two-registries.yaml")])
    assert exit_.value.code == 1
    assert "Secret 'aliyun-a' does not exist in namespace 'default'" in capsys.readouterr().err


def test_resolved_login_repr_never_shows_the_password():
    login = ResolvedLogin("a", "r.io", Credentials("user", "hunter2"), ca_pem="pem")
    assert "hunter2" not in repr(login) and "user" in repr(login)


def test_kiln_render_refuses_a_login_whose_ca_bundle_is_not_in_the_files(tmp_path, capsys):
    fixture = (FIXTURES / "git-private.yaml").read_text()
    without_ca = "\n---\n".join(d for d in fixture.split("\n---\n") if "kind: ConfigMap" not in d)
    (tmp_path / "build.yaml").write_text(without_ca)
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", str(tmp_path / "build.yaml")])
    assert exit_.value.code == 1
    assert "ImageBuild/private-app: ConfigMap 'corp-ca' does not exist" in capsys.readouterr().err
