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
from urllib.parse import urlsplit

from kiln import API_VERSION
from kiln.credentials import ResolvedLogin, merged_docker_config
from kiln.parse import BuildSpec, ConfigMapSource, GitSource, UrlSource, VolumeSource
from kiln.references import split_tagged
from kiln.resolve import BuildUnit
from kiln.settings import Settings

STATE_DIR = "/home/user/.local/share/buildkit"  # where the rootless daemon keeps its cache
DOCKER_CONFIG_DIR = "/kiln/docker"
BUILDKITD_DIR = "/kiln/buildkitd"
CONTEXT_DIR = "/kiln/context"
GIT_AUTH_DIR = "/kiln/git"
SECRETS_DIR = "/kiln/secrets"
OUTPUT_DIR = "/kiln/out"
METADATA_FILE = f"{OUTPUT_DIR}/metadata.json"  # buildctl writes the pushed digest here
TERMINATION_LOG = "/dev/termination-log"  # and the kubelet hands this file's text to the operator
# The kubelet bind-mounts the termination log file, and buildctl replaces its metadata file by
# renaming a temporary file over it, which a bind-mount target refuses (EBUSY). So buildctl
# writes into an emptyDir and this fixed script copies the file over. Every user value stays
# in "$@": the shell never reads one as script text. A build that pushed but left no metadata
# still exits 0: the operator then reads the digest from the registry, or reports it missing.
BUILD_SCRIPT = (
    'buildctl-daemonless.sh "$@" || exit\n'
    f'cat {METADATA_FILE} > {TERMINATION_LOG} || echo "kiln: buildctl left no metadata file" >&2\n'
)
BUILDKIT_UID = 1000  # the rootless image's user; changing it needs another image


def short_name(*parts: str, limit: int = 63) -> str:
    """parts joined by '-', the first one shortened (with a hash, to stay unique) to fit a label value."""
    head, tail = parts[0], "-".join(p for p in parts[1:] if p)
    room = limit - len(tail) - 1 if tail else limit
    if len(head) > room:
        head = head[: room - 7].rstrip("-.") + "-" + hashlib.sha256(head.encode()).hexdigest()[:6]
    return f"{head}-{tail}" if tail else head


def job_name(spec: BuildSpec, unit: BuildUnit, attempt: int = 0) -> str:
    return short_name(spec.name, spec.build_id, unit.key, f"r{attempt}" if attempt else "")


def docker_secret_name(spec: BuildSpec) -> str:
    return short_name(spec.name, spec.build_id, "docker")


def buildkitd_config_name(spec: BuildSpec) -> str:
    return short_name(spec.name, spec.build_id, "buildkitd")


def credential_names(name: str, build_id: str) -> list[tuple[str, str]]:
    """(plural, name) of what one build of ImageBuild `name` holds credentials and registry settings in."""
    return [("secrets", short_name(name, build_id, "docker")), ("configmaps", short_name(name, build_id, "buildkitd"))]


def owner_reference(spec: BuildSpec) -> dict:
    return {"apiVersion": API_VERSION, "kind": "ImageBuild", "name": spec.name, "uid": spec.uid,
            "controller": True, "blockOwnerDeletion": True}


def build_labels(spec: BuildSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kiln",
        "app.kubernetes.io/component": "build",
        "app.kubernetes.io/managed-by": "kiln",
        "kiln.dev/imagebuild": short_name(spec.name),
        "kiln.dev/build-id": spec.build_id,
        "kiln.dev/generation": str(spec.generation),
    }


def _metadata(spec: BuildSpec, name: str, **extra_labels: str) -> dict:
    return {"name": name, "namespace": spec.namespace, "labels": {**build_labels(spec), **extra_labels},
            "ownerReferences": [owner_reference(spec)]}


def render_docker_config_secret(spec: BuildSpec, logins: list[ResolvedLogin]) -> dict:
    config = json.dumps(merged_docker_config(logins), sort_keys=True).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        # The label puts it among the Secrets the operator watches (registry credentials): no read to find it.
        "metadata": _metadata(spec, docker_secret_name(spec), **{"kiln.dev/registry-login": "true"}),
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


def buildkitd_toml(logins: list[ResolvedLogin]) -> str | None:
    """buildkitd.toml for registries that are plain HTTP, self-signed or have their own CA; None if none do."""
    sections = []
    for login in sorted(logins, key=lambda item: item.server):
        if login.insecure:
            sections.append(f"[registry.{json.dumps(login.server)}]\n  http = true\n  insecure = true\n")
        elif login.ca_pem:
            ca = json.dumps(f"{BUILDKITD_DIR}/{_ca_key(login.server)}")
            sections.append(f"[registry.{json.dumps(login.server)}]\n  ca = [{ca}]\n")
    return "\n".join(sections) or None


def _ca_key(server: str) -> str:
    return "ca-" + server.replace(":", "-") + ".crt"


def render_buildkitd_config(spec: BuildSpec, logins: list[ResolvedLogin]) -> dict | None:
    toml = buildkitd_toml(logins)
    if toml is None:
        return None
    data = {"buildkitd.toml": toml}
    data.update({_ca_key(login.server): login.ca_pem for login in logins if login.ca_pem and not login.insecure})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(spec, buildkitd_config_name(spec)),
            "data": dict(sorted(data.items()))}


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


def buildctl_args(spec: BuildSpec, unit: BuildUnit) -> list[str]:
    """Arguments of `buildctl-daemonless.sh` (given to BUILD_SCRIPT as "$@"), for the pod's paths."""
    source = spec.source
    args = ["build", "--progress=plain", "--frontend=dockerfile.v0"]
    origin = source.origin
    if isinstance(origin, (VolumeSource, ConfigMapSource)):
        base = f"{CONTEXT_DIR}/{origin.path}" if isinstance(origin, VolumeSource) else CONTEXT_DIR
        context = _path(base, source.context_dir)
        dockerfile_dir, _, filename = _path(context, source.dockerfile).rpartition("/")
        args += [f"--local=context={context}", f"--local=dockerfile={dockerfile_dir}", f"--opt=filename={filename}"]
    elif isinstance(origin, GitSource):
        fragment = (origin.revision or "") + ("" if source.context_dir == "." else f":{source.context_dir}")
        args += [f"--opt=context={origin.url}" + (f"#{fragment}" if fragment else ""),
                 f"--opt=filename={source.dockerfile}"]
        if origin.secret:
            args += _git_auth_args(origin)
    elif isinstance(origin, UrlSource):
        args += [f"--opt=context={origin.url}", f"--opt=filename={source.dockerfile}"]
    if spec.target:
        args.append(f"--opt=target={spec.target}")
    if unit.platforms:
        args.append(f"--opt=platform={','.join(unit.platforms)}")
    args += [f"--opt=build-arg:{name}={value}" for name, value in spec.build_args]
    args += [f"--secret=id={secret.id},src={SECRETS_DIR}/{i}/value" for i, secret in enumerate(spec.secrets)]
    args.append(_output_arg(spec, unit))
    ref = cache_ref(spec, unit)
    if spec.cache.type == "registry":
        args.append(f"--export-cache=type=registry,ref={ref},mode={spec.cache.mode},ignore-error=true")
    elif spec.cache.type == "inline":
        args.append("--export-cache=type=inline")
    args += [f"--import-cache=type=registry,ref={r}" for r in cache_import_refs(spec, unit)]
    args.append(f"--metadata-file={METADATA_FILE}")
    return args


def _git_auth_item(origin: GitSource) -> dict:
    """What the pod mounts from the git Secret: a basic-auth password (the token) for http(s), else an SSH key."""
    if origin.url.startswith(("https://", "http://")):
        return {"key": "password", "path": "token"}
    return {"key": "ssh-privatekey", "path": "ssh-privatekey"}


def _git_auth_args(origin: GitSource) -> list[str]:
    mounted = f"{GIT_AUTH_DIR}/{_git_auth_item(origin)['path']}"
    if mounted.endswith("/token"):
        # BuildKit's git source reads a token for this host from this build secret; never from the URL (the
        # parser refuses user info there). Its "host" is Go's url.Host: with the port.
        host = urlsplit(origin.url).netloc
        return [f"--secret=id=GIT_AUTH_TOKEN.{host},src={mounted}"]
    return [f"--ssh=default={mounted}"]


def _path(base: str, relative: str) -> str:
    return base if relative == "." else f"{base}/{relative}"


def render_job(spec: BuildSpec, unit: BuildUnit, settings: Settings, *, buildkitd_config: bool = False,
               attempt: int = 0) -> dict:
    volumes, mounts = _volumes(spec, buildkitd_config)
    flags = "--oci-worker-no-process-sandbox" + (f" --config={BUILDKITD_DIR}/buildkitd.toml" if buildkitd_config else "")
    container = {
        "name": "buildkit",
        "image": settings.buildkit_image,
        "command": ["/bin/sh", "-c", BUILD_SCRIPT, "kiln-build"],
        "args": buildctl_args(spec, unit),
        "env": [{"name": "BUILDKITD_FLAGS", "value": flags}, {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.builder.resources:
        container["resources"] = spec.builder.resources
    node_selector = {"kubernetes.io/os": "linux", **dict(spec.builder.node_selector)}
    if unit.arch:
        node_selector["kubernetes.io/arch"] = unit.arch
    pod = {
        "restartPolicy": "Never",
        # Rootless BuildKit needs its own user namespaces: seccomp and AppArmor must allow them.
        "securityContext": {"runAsUser": BUILDKIT_UID, "runAsGroup": BUILDKIT_UID, "fsGroup": BUILDKIT_UID,
                            "seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"}},
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": node_selector,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.builder.user_namespaces:
        pod["hostUsers"] = False
    if spec.builder.service_account:
        pod["serviceAccountName"] = spec.builder.service_account
    if spec.builder.tolerations:
        pod["tolerations"] = list(spec.builder.tolerations)
    unit_labels = {"kiln.dev/unit": unit.key or "all"}
    if spec.cache.volume:
        unit_labels["kiln.dev/cache-volume"] = short_name(spec.cache.volume)
    annotations = {"kiln.dev/built-by": unit.built_by, "kiln.dev/attempt": str(attempt)}
    if unit.platforms:
        annotations["kiln.dev/platforms"] = ",".join(unit.platforms)
    metadata = {**_metadata(spec, job_name(spec, unit, attempt), **unit_labels), "annotations": annotations}
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


def _volumes(spec: BuildSpec, buildkitd_config: bool) -> tuple[list[dict], list[dict]]:
    state = {"persistentVolumeClaim": {"claimName": spec.cache.volume}} if spec.cache.volume else {"emptyDir": {}}
    volumes = [
        {"name": "buildkit-state", **state},
        {"name": "docker-config", "secret": {"secretName": docker_secret_name(spec), "defaultMode": 0o440,
                                             "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
        {"name": "build-output", "emptyDir": {}},
    ]
    mounts = [{"name": "buildkit-state", "mountPath": STATE_DIR},
              {"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True},
              {"name": "build-output", "mountPath": OUTPUT_DIR}]
    if buildkitd_config:
        volumes.append({"name": "buildkitd-config", "configMap": {"name": buildkitd_config_name(spec)}})
        mounts.append({"name": "buildkitd-config", "mountPath": BUILDKITD_DIR, "readOnly": True})
    origin = spec.source.origin
    if isinstance(origin, VolumeSource):
        volumes.append({"name": "context", "persistentVolumeClaim": {"claimName": origin.claim, "readOnly": True}})
        mounts.append({"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True})
    elif isinstance(origin, ConfigMapSource):
        volumes.append({"name": "context", "configMap": {"name": origin.name}})
        mounts.append({"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True})
    elif isinstance(origin, GitSource) and origin.secret:
        volumes.append({"name": "git-auth", "secret": {"secretName": origin.secret, "defaultMode": 0o440,
                                                       "items": [_git_auth_item(origin)]}})
        mounts.append({"name": "git-auth", "mountPath": GIT_AUTH_DIR, "readOnly": True})
    for i, secret in enumerate(spec.secrets):
        volumes.append({"name": f"build-secret-{i}", "secret": {"secretName": secret.secret, "defaultMode": 0o440,
                                                               "items": [{"key": secret.key, "path": "value"}]}})
        mounts.append({"name": f"build-secret-{i}", "mountPath": f"{SECRETS_DIR}/{i}", "readOnly": True})
    return volumes, mounts


def render_build(spec: BuildSpec, logins: list[ResolvedLogin], plan: tuple[BuildUnit, ...],
                 settings: Settings, attempt: int = 0) -> list[dict]:
    """Every object one build needs: the merged docker config Secret, buildkitd.toml if any, one Job per unit."""
    buildkitd = render_buildkitd_config(spec, logins)
    jobs = [render_job(spec, unit, settings, buildkitd_config=buildkitd is not None, attempt=attempt) for unit in plan]
    return [render_docker_config_secret(spec, logins), *([buildkitd] if buildkitd else []), *jobs]
