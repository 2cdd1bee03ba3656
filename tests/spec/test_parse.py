"""The parser against hostile input: what a tenant could slip into a Job, a command line or an error message.

The CRD refuses the same specs (tests/malformed.py, checked against the real API server too); these are the
cases only the parser can judge, or where what it says matters as much as that it refuses."""
import copy

import pytest

from kiln.cli import main as kiln_main
from kiln.spec.parse import InvalidSpec, parse_image_build

BUILD = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
         "metadata": {"name": "app", "namespace": "team", "uid": "u", "generation": 1},
         "spec": {"source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "r.example/app"}}}
TOKEN = "glpat-Sup3rSecretT0ken"


def refusal(**spec) -> InvalidSpec:
    obj = copy.deepcopy(BUILD)
    obj["spec"].update(spec)
    with pytest.raises(InvalidSpec) as caught:
        parse_image_build(obj)
    return caught.value


def test_a_build_arg_name_ending_in_a_newline_is_refused():
    assert refusal(buildArgs={"VERSION\n": "1"}).field == "spec.buildArgs.VERSION\n"


def test_a_nul_in_a_build_arg_value_is_refused():
    assert refusal(buildArgs={"A": "x\x00y"}).message == "must not contain a NUL character"


@pytest.mark.parametrize("name", ["BUILDKIT_ATTEST_PROVENANCE", "buildkit_attest_sbom", "BUILDKIT_SBOM_SCAN_STAGE"])
def test_build_args_that_buildkit_reads_as_attestation_settings_are_refused(name):
    """A build argument could otherwise turn provenance off, or point the SBOM at a generator of the user's."""
    refused = refusal(buildArgs={name: "mode=max"})
    assert (refused.field, refused.message) == (f"spec.buildArgs.{name}", "BuildKit reads this as an attestation "
                                                                          "setting: use spec.attestations")


def test_a_build_without_attestation_settings_gets_min_provenance_and_no_sbom():
    spec = parse_image_build(BUILD)
    assert (spec.attestations.provenance, spec.attestations.sbom, spec.signing.key_secret) == ("min", False, None)


@pytest.mark.parametrize("generator", ["registry.example/tools/scanner", "scanner:1", f"r.example/s@sha256:{'a' * 64}",
                                       f"r.example:5000/s:1@sha256:{'b' * 64}"])
def test_an_sbom_generator_is_any_image_reference(generator):
    spec = parse_image_build({**BUILD, "spec": {**BUILD["spec"], "attestations": {"sbom": {"generator": generator}}}})
    assert (spec.attestations.sbom, spec.attestations.sbom_generator) == (True, generator)


def test_an_sbom_generator_reference_is_never_quoted():
    refused = refusal(attestations={"sbom": {"generator": f"https://{TOKEN}@r.example/s"}})
    assert TOKEN not in str(refused)


@pytest.mark.parametrize("name", ["app\n", "app\n---", "-app", "App"])
def test_a_name_a_file_gives_kiln_render_is_checked_as_the_api_server_would(name):
    obj = copy.deepcopy(BUILD)
    obj["metadata"]["name"] = name
    with pytest.raises(InvalidSpec) as caught:
        parse_image_build(obj)
    assert caught.value.field == "metadata.name"


@pytest.mark.parametrize(("where", "spec"), [
    ("spec.source.git.url", {"source": {"git": {"url": f"https://oauth2:{TOKEN}@git.example/a b.git"}}}),
    ("spec.source.git.url", {"source": {"git": {"url": f"https://git.example/a b.git?token={TOKEN}"}}}),
    ("spec.source.url", {"source": {"url": f"https://u:{TOKEN}@files.example/c c.tgz"}}),
    ("spec.cache.ref", {"cache": {"ref": f"user:{TOKEN}@r.example/app"}}),
    ("spec.cache.importRefs[0]", {"cache": {"importRefs": [f"user:{TOKEN}@r.example/app"]}}),
    ("spec.output.image", {"output": {"image": f"user:{TOKEN}@r.example/app"}}),
], ids=["git-credentials-and-space", "git-query-and-space", "tarball-credentials-and-space", "cache-ref", "import-ref",
        "output-image"])
def test_a_refusal_never_quotes_a_url_or_reference_that_may_carry_a_token(where, spec):
    error = refusal(**spec)
    assert error.field == where and TOKEN not in str(error)


@pytest.mark.parametrize("url", [
    f"https://git.example/app.git?access_token={TOKEN}", f"https://git.example/app.git?ref=main&TOKEN={TOKEN}",
    "https://bucket.s3.amazonaws.com/c.tgz?X-Amz-Algorithm=AWS4&X-Amz-Signature=abc",
    "https://storage.googleapis.com/b/c.tgz?X-Goog-Signature=abc", "https://a.blob.core.windows.net/c.tgz?sv=1&sig=abc",
])
def test_a_credential_in_a_query_string_never_reaches_the_job(url):
    kind = {"git": {"url": url}} if url.endswith("app.git") or ".git?" in url else {"url": url}
    error = refusal(source=kind)
    assert "must not carry a credential in its query" in error.message


@pytest.mark.parametrize("url", ["ssh://-oProxyCommand=touch%20x/r.git", "git@-oProxyCommand=x:r.git",
                                 "ssh://git@-oProxyCommand=x/r.git", "https://-x.example/r.git"])
def test_a_git_host_that_reads_as_an_option_is_refused(url):
    assert refusal(source={"git": {"url": url}}).message == "source.git.url: the host must not start with '-'"


METADATA_HOSTS = [
    "169.254.169.254", "[fe80::1]", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "2852039166", "0xa9fea9fe",
    "0251.0376.0251.0376", "169.254.43518", "metadata.google.internal", "metadata.google.internal.", "METADATA",
    "100.100.100.200", "168.63.129.16", "[fd00:ec2::254]",
]
SOURCES = {"git": lambda host: {"git": {"url": f"https://{host}/app.git"}},
           "scp": lambda host: {"git": {"url": f"git@{host}:app.git"}},  # git@host:path has no brackets
           "tarball": lambda host: {"url": f"http://{host}:80/ctx.tgz"}}


@pytest.mark.parametrize(("kind", "host"), [(kind, host) for kind in SOURCES for host in METADATA_HOSTS
                                            if not (kind == "scp" and host.startswith("["))])
def test_a_context_at_a_metadata_address_in_any_spelling_is_refused(kind, host):
    assert "link-local or cloud metadata address" in refusal(source=SOURCES[kind](host)).message


@pytest.mark.parametrize("host", ["10.0.0.5", "git.example", "127.0.0.1", "[2001:db8::1]", "169.254.example.com"])
def test_an_ordinary_host_is_accepted(host):
    obj = copy.deepcopy(BUILD)
    obj["spec"]["source"] = {"git": {"url": f"https://{host}/app.git"}}
    assert parse_image_build(obj).source.origin.url == f"https://{host}/app.git"


def test_kiln_render_refuses_a_yaml_alias_bomb_at_once(tmp_path, capsys):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")  # 9^9 strings once expanded
    with pytest.raises(SystemExit) as exit_:
        kiln_main(["render", "-f", str(path)])
    assert exit_.value.code == 1
    assert "YAML aliases (*name) are not accepted" in capsys.readouterr().err


@pytest.mark.parametrize(("builder", "source", "warm"), [
    ({}, BUILD["spec"]["source"], True),  # unset: the namespace's default
    ({"warm": False}, BUILD["spec"]["source"], False),  # the build's own choice wins
    ({}, {"volume": {"claimName": "workspace"}}, False),  # a warm builder cannot read it: a pod, not a refusal
])
def test_a_namespace_that_defaults_to_warm_builders_gives_them_to_builds_that_leave_the_choice_open(
        builder, source, warm):
    obj = copy.deepcopy(BUILD)
    obj["spec"].update(builder=builder, source=source)
    assert parse_image_build(obj, warm_default=True).builder.warm is warm
    assert parse_image_build(obj).builder.warm is False
