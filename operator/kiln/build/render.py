"""render: a parsed build -> the Kubernetes objects that run it, as plain dicts.

Pure: no API calls. Every user string lands in one argv element or one field
value — never in shell text or YAML text — so no value can add an argument or a
field. buildctl options take their value in the same element (`--opt=...`), so a
value that starts with `--` stays a value.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from kiln import API_VERSION
from kiln.build.credentials import ResolvedLogin, merged_docker_config
from kiln.build.platforms import BuildUnit
from kiln.spec import labels
from kiln.spec.parse import BuildSpec, ConfigMapSource, GitSource, UrlSource, VolumeSource
from kiln.spec.references import split_tagged
from kiln.spec.settings import Settings

STATE_DIR = "/home/user/.local/share/buildkit"  # where the rootless daemon keeps its cache
# Where buildctl finds its files: under ROOT in a build pod; under a directory of the operator's for a build on a
# warm builder, where the operator is the client.
ROOT = "/kiln"
DOCKER_CONFIG_DIR = f"{ROOT}/docker"
BUILDKITD_DIR = f"{ROOT}/buildkitd"
CONTEXT_DIR = f"{ROOT}/context"
GIT_AUTH_DIR = f"{ROOT}/git"
SECRETS_DIR = f"{ROOT}/secrets"
OUTPUT_DIR = f"{ROOT}/out"
METADATA_FILE = f"{OUTPUT_DIR}/metadata.json"  # buildctl writes the pushed digest here
TERMINATION_LOG = "/dev/termination-log"  # and the kubelet hands this file's text to the operator
# The kubelet bind-mounts the termination log file, and buildctl replaces its metadata file by
# renaming a temporary file over it, which a bind-mount target refuses (EBUSY). So buildctl
# writes into an emptyDir and this fixed script copies the file over. Every user value stays
# in "$@": the shell never reads one as script text. A build that pushed but left no metadata
# still exits 0: the operator then reads the digest from the registry, or reports it missing.
# The script is the container's PID 1, which the kernel spares the signals it has no handler for: asked to stop
# (a pod deleted, a suspend, a superseding build), it stops every process of the container (buildctl, the
# daemon, the RUN step) at once, so nothing is pushed after kiln let go of the build.
BUILD_SCRIPT = (
    "trap 'kill -TERM -1 2>/dev/null; wait; exit 143' TERM INT\n"
    'buildctl-daemonless.sh "$@" &\n'
    'wait $! || exit\n'
    f'cat {METADATA_FILE} > {TERMINATION_LOG} || echo "kiln: buildctl left no metadata file" >&2\n'
)
BUILDKIT_UID = 1000  # the rootless image's user; changing it needs another image
# A pod in its own user namespace (spec.builder.userNamespaces) has the IDs 0-65535 only, and the rootless image gives
# its user subordinate IDs from 100000, which rootlesskit then cannot map. These (its own 1000 left out by rootlesskit)
# are inside the pod's range. With them, and /proc unmasked, BuildKit runs each RUN step in a PID namespace of its
# own (the process sandbox): a step cannot see, signal or trace the daemon, nor outlive its step.
SUBORDINATE_IDS = "user:1:65535\n"


def short_name(*parts: str, limit: int = 63) -> str:
    """parts joined by '-', the first one shortened (with a hash, to stay unique) to fit a label value."""
    head, tail = parts[0], "-".join(p for p in parts[1:] if p)
    room = limit - len(tail) - 1 if tail else limit
    if len(head) > room:
        head = head[: room - 7].rstrip("-.") + "-" + hashlib.sha256(head.encode()).hexdigest()[:6]
    return f"{head}-{tail}" if tail else head


def job_name(spec: BuildSpec, unit: BuildUnit, attempt: int = 0) -> str:
    return short_name(spec.name, spec.build_id, unit.key, f"r{attempt}" if attempt else "")


def build_secret_name(name: str, build_id: str) -> str:
    """The Secret one build of ImageBuild `name` holds its credentials and registry settings in."""
    return short_name(name, build_id, "docker")


def owner_reference(spec: BuildSpec) -> dict:
    return {"apiVersion": API_VERSION, "kind": "ImageBuild", "name": spec.name, "uid": spec.uid,
            "controller": True, "blockOwnerDeletion": True}


def build_labels(spec: BuildSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kiln",
        "app.kubernetes.io/component": "build",
        **labels.MANAGED,
        labels.IMAGEBUILD: short_name(spec.name),
        labels.BUILD_ID: spec.build_id,
        labels.GENERATION: str(spec.generation),
    }


def _metadata(spec: BuildSpec, name: str, **extra_labels: str) -> dict:
    return {"name": name, "namespace": spec.namespace, "labels": {**build_labels(spec), **extra_labels},
            "ownerReferences": [owner_reference(spec)]}


def render_build_secret(spec: BuildSpec, logins: list[ResolvedLogin]) -> dict:
    """The merged docker config, and buildkitd.toml with the CA files it names when a registry needs them:
    one object per build, so starting and ending one costs one create and one delete."""
    files = {".dockerconfigjson": json.dumps(merged_docker_config(logins), sort_keys=True), **buildkitd_files(logins)}
    if spec.builder.user_namespaces:
        files["subid"] = SUBORDINATE_IDS
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, build_secret_name(spec.name, spec.build_id)),
        "type": "kubernetes.io/dockerconfigjson",
        "data": {key: base64.b64encode(text.encode()).decode() for key, text in sorted(files.items())},
    }


def buildkitd_files(logins: list[ResolvedLogin]) -> dict[str, str]:
    """buildkitd.toml and the CA files it names, for registries that are plain HTTP, self-signed or have
    their own CA; nothing when none are."""
    sections, files = [], {}
    for login in sorted(logins, key=lambda item: item.server):
        if login.insecure:
            sections.append(f"[registry.{json.dumps(login.server)}]\n  http = true\n  insecure = true\n")
        elif login.ca_pem:
            key = _ca_key(login.server)
            files[key] = login.ca_pem
            sections.append(f"[registry.{json.dumps(login.server)}]\n  ca = [{json.dumps(f'{BUILDKITD_DIR}/{key}')}]\n")
    return {"buildkitd.toml": "\n".join(sections), **files} if sections else {}


def registry_auth_tls(logins: list[ResolvedLogin], root: str = ROOT) -> tuple[str, ...]:
    """buildctl's --registry-auth-tlscontext for registries with their own CA or no trusted certificate: buildctl,
    not the daemon, fetches registry tokens, from a token service often on another port or host that uses the
    registry's certificates, and it looks its TLS up by the registry's host."""
    found = []
    for login in sorted(logins, key=lambda item: item.server):
        if login.insecure:
            found.append(f"host={login.server},insecure=true")
        elif login.ca_pem:
            found.append(f"host={login.server},ca={root}/buildkitd/{_ca_key(login.server)}")
    return tuple(found)


def _ca_key(server: str) -> str:
    """A Secret key for the server's CA file (keys allow letters, digits, '-', '_' and '.')."""
    return "ca-" + re.sub(r"[^-._a-zA-Z0-9]", "-", server) + ".crt"


def cache_ref(spec: BuildSpec, unit: BuildUnit) -> str | None:
    """Where this unit exports its registry cache; one ref per pod so parallel pods never race."""
    if spec.cache.ref is None or not unit.key:
        return spec.cache.ref
    repo, tag = split_tagged(spec.cache.ref)
    return f"{repo}:{tag[: 127 - len(unit.key)]}-{unit.key}"


def cache_import_refs(spec: BuildSpec, unit: BuildUnit) -> list[str]:
    own = {"registry": [cache_ref(spec, unit)], "inline": [spec.output.refs[0]]}.get(spec.cache.type, [])
    return [ref for ref in own + list(spec.cache.import_refs) if ref]


def _output_arg(spec: BuildSpec, unit: BuildUnit) -> str:
    if unit.by_digest:
        # Each pod pushes its platform by digest only; the operator tags the assembled index.
        return f"--output=type=image,name={spec.output.image},push-by-digest=true,name-canonical=true,push=true"
    # buildctl splits this value as CSV: a quoted field keeps several names in one option.
    names = ",".join(spec.output.refs)
    return f'--output=type=image,"name={names}",push={"true" if spec.output.push else "false"}'


def builder_id(spec: BuildSpec, settings: Settings) -> str:
    """Who built it, as provenance names the builder: this build of this ImageBuild, on this cluster's kiln."""
    return f"{settings.builder_id}/namespaces/{spec.namespace}/imagebuilds/{spec.name}/builds/{spec.build_id}"


def attestation_args(spec: BuildSpec, settings: Settings) -> list[str]:
    """The attestations BuildKit attaches to the image: SLSA provenance naming this build, an SBOM."""
    wanted = spec.attestations
    args = []
    if wanted.provenance != "off":
        args.append(f"--opt=attest:provenance=mode={wanted.provenance},builder-id={builder_id(spec, settings)}")
    if wanted.sbom:
        args.append(f"--opt=attest:sbom=generator={wanted.sbom_generator or settings.sbom_generator}")
        if wanted.scan_stages:
            args.append("--opt=build-arg:BUILDKIT_SBOM_SCAN_STAGE=true")
    return args


def buildctl_args(spec: BuildSpec, unit: BuildUnit, settings: Settings, root: str = ROOT) -> list[str]:
    """Arguments of `buildctl-daemonless.sh` (given to BUILD_SCRIPT as "$@"), for the pod's paths (its files
    under root)."""
    source = spec.source
    args = ["build", "--progress=plain", "--frontend=dockerfile.v0"]
    origin = source.origin
    if isinstance(origin, (VolumeSource, ConfigMapSource)):
        base = f"{root}/context/{origin.path}" if isinstance(origin, VolumeSource) else f"{root}/context"
        context = _path(base, source.context_dir)
        dockerfile_dir, _, filename = _path(context, source.dockerfile).rpartition("/")
        args += [f"--local=context={context}", f"--local=dockerfile={dockerfile_dir}", f"--opt=filename={filename}"]
    elif isinstance(origin, GitSource):
        fragment = (origin.revision or "") + ("" if source.context_dir == "." else f":{source.context_dir}")
        args += [f"--opt=context={origin.url}" + (f"#{fragment}" if fragment else ""),
                 f"--opt=filename={source.dockerfile}"]
        if origin.secret:
            args += _git_auth_args(origin, root)
    elif isinstance(origin, UrlSource):
        args += [f"--opt=context={origin.url}", f"--opt=filename={source.dockerfile}"]
    if spec.target:
        args.append(f"--opt=target={spec.target}")
    if unit.platforms:
        args.append(f"--opt=platform={','.join(unit.platforms)}")
    args += [f"--opt=build-arg:{name}={value}" for name, value in spec.build_args]
    args += [f"--secret=id={secret.id},src={root}/secrets/{i}/value" for i, secret in enumerate(spec.secrets)]
    args += attestation_args(spec, settings)
    args.append(_output_arg(spec, unit))
    ref = cache_ref(spec, unit)
    if spec.cache.type == "registry":
        args.append(f"--export-cache=type=registry,ref={ref},mode={spec.cache.mode},ignore-error=true")
    elif spec.cache.type == "inline":
        args.append("--export-cache=type=inline")
    args += [f"--import-cache=type=registry,ref={r}" for r in cache_import_refs(spec, unit)]
    args.append(f"--metadata-file={root}/out/metadata.json")
    return args


def git_auth_item(origin: GitSource) -> dict:
    """What the pod mounts from the git Secret: a basic-auth password (the token) for http(s), else an SSH key."""
    if origin.url.startswith(("https://", "http://")):
        return {"key": "password", "path": "token"}
    return {"key": "ssh-privatekey", "path": "ssh-privatekey"}


def _git_auth_args(origin: GitSource, root: str) -> list[str]:
    mounted = f"{root}/git/{git_auth_item(origin)['path']}"
    if mounted.endswith("/token"):
        # BuildKit's git source reads a token for this host from this build secret; never from the URL (the
        # parser refuses user info there). Its "host" is Go's url.Host: with the port.
        host = urlsplit(origin.url).netloc
        return [f"--secret=id=GIT_AUTH_TOKEN.{host},src={mounted}"]
    return [f"--ssh=default={mounted}"]


def _path(base: str, relative: str) -> str:
    return base if relative == "." else f"{base}/{relative}"


def job_metadata(spec: BuildSpec, unit: BuildUnit, attempt: int) -> dict:
    """A unit attempt's Job metadata: its name, the build's labels and owner, which unit, platforms and attempt (a
    build on a warm builder, which has no Job, is shown to decide with the same)."""
    unit_labels = {labels.UNIT: unit.key or "all"}
    if spec.cache.volume:
        unit_labels[labels.CACHE_VOLUME] = short_name(spec.cache.volume)
    annotations = {labels.BUILT_BY: unit.built_by, labels.ATTEMPT: str(attempt)}
    if unit.platforms:
        annotations[labels.PLATFORMS] = ",".join(unit.platforms)
    return {**_metadata(spec, job_name(spec, unit, attempt), **unit_labels), "annotations": annotations}


def render_job(spec: BuildSpec, unit: BuildUnit, settings: Settings, *, buildkitd: tuple[str, ...] = (),
               auth_tls: tuple[str, ...] = (), attempt: int = 0) -> dict:
    """One unit's Job; buildkitd names the build Secret's buildkitd files (buildkitd.toml and CA files), if any,
    and auth_tls the TLS buildctl fetches registry tokens with (registry_auth_tls)."""
    volumes, mounts = _volumes(spec, buildkitd)
    # Without its own user namespace the pod cannot mount a fresh /proc for a RUN step: BuildKit then runs steps
    # without the process sandbox, in the daemon's PID namespace.
    sandbox = [] if spec.builder.user_namespaces else ["--oci-worker-no-process-sandbox"]
    flags = " ".join(sandbox + ([f"--config={BUILDKITD_DIR}/buildkitd.toml"] if buildkitd else []))
    container = {
        "name": "buildkit",
        "image": settings.buildkit_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT, "kiln-build"],
        "args": [*buildctl_args(spec, unit, settings), *(f"--registry-auth-tlscontext={tls}" for tls in auth_tls)],
        "env": [{"name": "BUILDKITD_FLAGS", "value": flags}, {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.builder.resources:
        container["resources"] = spec.builder.resources
    if spec.builder.user_namespaces:
        container["securityContext"] = {"procMount": "Unmasked"}
    pod = {"restartPolicy": "Never", **rootless_pod(spec, unit, container, volumes)}
    if spec.builder.user_namespaces:
        pod["hostUsers"] = False
    metadata = job_metadata(spec, unit, attempt)
    annotations = metadata["annotations"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,  # kiln retries transient failures itself, never a Dockerfile error
            "activeDeadlineSeconds": spec.timeout_seconds,
            "template": {"metadata": {"labels": dict(metadata["labels"]), "annotations": dict(annotations)}, "spec": pod},
        },
    }


def rootless_pod(spec: BuildSpec, unit: BuildUnit, container: dict, volumes: list[dict]) -> dict:
    """A pod spec for rootless BuildKit on the unit's nodes, with spec.builder's knobs: a build pod's, a builder's."""
    node_selector = {"kubernetes.io/os": "linux", **dict(spec.builder.node_selector)}
    if unit.arch:
        node_selector["kubernetes.io/arch"] = unit.arch
    pod = {
        # Rootless BuildKit needs its own user namespaces: seccomp and AppArmor must allow them.
        "securityContext": {"runAsUser": BUILDKIT_UID, "runAsGroup": BUILDKIT_UID, "fsGroup": BUILDKIT_UID,
                            "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}},
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": node_selector,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.builder.service_account:
        pod["serviceAccountName"] = spec.builder.service_account
    if spec.builder.tolerations:
        pod["tolerations"] = list(spec.builder.tolerations)
    return pod


def _volumes(spec: BuildSpec, buildkitd: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    state = {"persistentVolumeClaim": {"claimName": spec.cache.volume}} if spec.cache.volume else {"emptyDir": {}}
    secret = build_secret_name(spec.name, spec.build_id)
    volumes = [
        {"name": "buildkit-state", **state},
        {"name": "docker-config", "secret": {"secretName": secret, "defaultMode": 0o440,
                                             "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
        {"name": "build-output", "emptyDir": {}},
    ]
    mounts = [{"name": "buildkit-state", "mountPath": STATE_DIR},
              {"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True},
              {"name": "build-output", "mountPath": OUTPUT_DIR}]
    if buildkitd:
        volumes.append({"name": "buildkitd-config", "secret": {"secretName": secret, "defaultMode": 0o440,
                                                               "items": [{"key": k, "path": k} for k in buildkitd]}})
        mounts.append({"name": "buildkitd-config", "mountPath": BUILDKITD_DIR, "readOnly": True})
    if spec.builder.user_namespaces:
        volumes.append({"name": "subordinate-ids", "secret": {"secretName": secret, "defaultMode": 0o444,
                                                              "items": [{"key": "subid", "path": "subid"}]}})
        mounts += [{"name": "subordinate-ids", "mountPath": f"/etc/{name}", "subPath": "subid", "readOnly": True}
                   for name in ("subuid", "subgid")]
    origin = spec.source.origin
    if isinstance(origin, VolumeSource):
        volumes.append({"name": "context", "persistentVolumeClaim": {"claimName": origin.claim, "readOnly": True}})
        mounts.append({"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True})
    elif isinstance(origin, ConfigMapSource):
        volumes.append({"name": "context", "configMap": {"name": origin.name}})
        mounts.append({"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True})
    elif isinstance(origin, GitSource) and origin.secret:
        volumes.append({"name": "git-auth", "secret": {"secretName": origin.secret, "defaultMode": 0o440,
                                                       "items": [git_auth_item(origin)]}})
        mounts.append({"name": "git-auth", "mountPath": GIT_AUTH_DIR, "readOnly": True})
    for i, secret in enumerate(spec.secrets):
        volumes.append({"name": f"build-secret-{i}", "secret": {"secretName": secret.secret, "defaultMode": 0o440,
                                                               "items": [{"key": secret.key, "path": "value"}]}})
        mounts.append({"name": f"build-secret-{i}", "mountPath": f"{SECRETS_DIR}/{i}", "readOnly": True})
    return volumes, mounts


def render_build(spec: BuildSpec, logins: list[ResolvedLogin], plan: tuple[BuildUnit, ...],
                 settings: Settings, attempt: int = 0) -> list[dict]:
    """Every object one build needs: its Secret, one Job per unit."""
    return render_children(spec, logins, settings, secret=True, jobs=[(unit, attempt) for unit in plan])


def render_children(spec: BuildSpec, logins: list[ResolvedLogin], settings: Settings, *, secret: bool,
                    jobs: Sequence[tuple[BuildUnit, int]]) -> list[dict]:
    """What a decision creates, in its order: the build's Secret when asked for, then a Job per (unit, attempt)."""
    buildkitd = tuple(buildkitd_files(logins)) if jobs else ()
    auth_tls = registry_auth_tls(logins) if jobs else ()
    return [*([render_build_secret(spec, logins)] if secret else []),
            *(render_job(spec, unit, settings, buildkitd=buildkitd, auth_tls=auth_tls, attempt=attempt)
              for unit, attempt in jobs)]
