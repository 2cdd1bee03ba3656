"""The operator image's recipe: what it installs is what kiln needs, and every file of the package reaches it."""
import json
import subprocess
import tomllib

from cluster import operator_image
from cluster.versions import BUILDKIT, COSIGN
from packaging.requirements import Requirement

from conftest import ROOT


def test_every_runtime_dependency_is_pinned_for_the_image_at_a_version_it_allows():
    pinned = {}
    for line in operator_image.REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(dependency)
        assert requirement.specifier.contains(pinned[requirement.name.lower()]), dependency


def test_no_file_of_the_package_is_left_out_of_git_where_the_image_and_kiln_builds_kiln_take_it_from():
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "operator" / "kiln").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(files), cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert ignored == []


def test_the_dockerfile_is_built_from_the_base_layout_by_its_digest(tmp_path):
    layout = tmp_path / "base"
    layout.mkdir()
    (layout / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:" + "a" * 64}]}))
    args = operator_image.buildctl_args(layout, "r.example/kiln:1", tmp_path / "kiln.tar", push=True, insecure=False)
    assert f"--opt=build-arg:BASE={operator_image.BASE_NAME}" in args
    assert f"--oci-layout={operator_image.BASE_NAME}={layout}" in args
    assert f"--opt=context:{operator_image.BASE_NAME}=oci-layout://{operator_image.BASE_NAME}@sha256:{'a' * 64}" in args
    assert [a for a in args if a.startswith("type=")] == [f"type=oci,dest={tmp_path / 'kiln.tar'},name=r.example/kiln:1",
                                                         "type=image,name=r.example/kiln:1,push=true"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim\n" in dockerfile and "\nFROM ${BASE}\n" in dockerfile
    # The base already holds cosign: the stage that builds it from source is not needed, nor its golang image.
    assert f"--opt=build-arg:COSIGN_FROM={operator_image.BASE_NAME}" in args
    assert "FROM ${COSIGN_FROM} AS cosign\n" in dockerfile
    # buildctl too, which it has from the pinned BuildKit build.
    assert f"--opt=build-arg:BUILDCTL_FROM={operator_image.BASE_NAME}" in args
    assert f"ARG BUILDCTL_FROM=moby/buildkit:{BUILDKIT.version}\n" in dockerfile


def test_the_dockerfile_builds_the_pinned_cosign():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"github.com/sigstore/cosign/v3/cmd/cosign@{COSIGN.version}" in dockerfile
    assert COSIGN.module == "github.com/sigstore/cosign/v3"
