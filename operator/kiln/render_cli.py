"""`kiln render`: the objects the operator would create for the ImageBuilds in some YAML files.

Reads the same YAML users apply (ImageBuilds, RegistryLogins, Secrets, ConfigMaps);
needs no cluster and talks to no registry. Logins are taken as Ready.
"""
from __future__ import annotations

import base64
import json
import pathlib
import sys
from typing import TextIO

import yaml

from kiln.build import builders
from kiln.build.credentials import CredentialsProblem, resolved_login, selected_logins
from kiln.build.platforms import build_plan
from kiln.build.render import render_build, render_children
from kiln.clients import cosign
from kiln.spec.parse import InvalidSpec, parse_image_build, parse_registry_login
from kiln.spec.settings import Settings

REDACTED = "<redacted: kiln render --show-secrets shows it>"
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


class RenderError(Exception):
    pass


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases: a few hundred bytes of nested ones expand to gigabytes (the billion laughs), and
    Kubernetes objects have no use for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _documents(paths: list[str], stdin: TextIO) -> list[tuple[str, dict]]:
    files: list[pathlib.Path | str] = []
    for name in paths:
        path = pathlib.Path(name)
        if name == "-":
            files.append("-")
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
        elif path.exists():
            files.append(path)
        else:
            raise RenderError(f"{name}: no such file or directory")
    docs = []
    for path in files:
        try:
            loaded = list(yaml.load_all(stdin.read() if path == "-" else path.read_text(), Loader=_NoAliases))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            what = exc.problem if "aliases" in (getattr(exc, "problem", "") or "") else exc.__class__.__name__
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise RenderError(f"{path}: not valid YAML{at}: {what}") from None
        for doc in loaded:
            if isinstance(doc, dict) and doc.get("kind") == "List":
                docs += [(str(path), item) for item in doc.get("items", [])]
            elif isinstance(doc, dict):
                docs.append((str(path), doc))
    return docs


def _shown(name) -> str:
    """A name as an error message shows it: quoted when it holds what could forge a line of output."""
    return name if isinstance(name, str) and name.isprintable() else repr(name)


def _key(doc: dict) -> tuple[str, str]:
    meta = doc.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def _as_stored(doc: dict) -> dict:
    """A Secret as the API server stores it: stringData merged into data (base64), winning over it."""
    if doc.get("kind") != "Secret" or not doc.get("stringData"):
        return doc
    encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in doc["stringData"].items()}
    return {**{k: v for k, v in doc.items() if k != "stringData"}, "data": {**(doc.get("data") or {}), **encoded}}


def _found(by_kind: dict, kind: str, namespace: str, name: str | None) -> dict | None:
    return by_kind.get(kind, {}).get((namespace, name), (None, None))[1] if name else None


def render_objects(paths: list[str], settings: Settings, stdin: TextIO | None = None) -> list[dict]:
    return render_with_steps(paths, settings, stdin)[0]


def render_with_steps(paths: list[str], settings: Settings,
                      stdin: TextIO | None = None) -> tuple[list[dict], list[str]]:
    """The objects the operator would create, and what it does itself once they ran (signing)."""
    docs = _documents(paths, stdin or sys.stdin)
    by_kind: dict[str, dict[tuple[str, str], tuple[str, dict]]] = {}
    for path, doc in docs:
        by_kind.setdefault(doc.get("kind", ""), {})[_key(doc)] = (path, _as_stored(doc))
    logins = []
    for path, doc in by_kind.get("RegistryLogin", {}).values():
        try:
            logins.append(parse_registry_login(doc))
        except InvalidSpec as exc:
            raise RenderError(f"{path}: RegistryLogin/{_shown(_key(doc)[1])}: {exc}") from None
    out, steps = [], []
    for path, doc in by_kind.get("ImageBuild", {}).values():
        where = f"{path}: ImageBuild/{_shown(_key(doc)[1])}"
        doc = {**doc, "metadata": {"uid": PLACEHOLDER_UID, **(doc.get("metadata") or {})}}
        try:
            spec = parse_image_build(doc)
            resolved = [resolved_login(login, _found(by_kind, "Secret", login.namespace, login.secret),
                                       _found(by_kind, "ConfigMap", login.namespace, login.ca_config_map))
                        for login in selected_logins(spec, logins)]
            if spec.builder.warm:
                warm, step = _warm(spec, resolved, settings)
                out += [o for o in warm if o not in out]  # builds of one kind share their builder
                steps.append(step)
            else:
                out += render_build(spec, resolved, build_plan(spec), settings)
        except InvalidSpec as exc:
            raise RenderError(f"{where}: {exc}") from None
        except CredentialsProblem as exc:
            raise RenderError(f"{where}: {exc.message}") from None
        if spec.signing.key_secret:
            steps.append(_signing_step(spec, settings))
    return out, steps


def _warm(spec, logins, settings: Settings) -> tuple[list[dict], str]:
    """A warm build's Secret and builders (no Job: the operator is the BuildKit client), and what it runs."""
    objects, commands = render_children(spec, logins, settings, secret=True, jobs=()), []
    for unit in build_plan(spec):
        kind = builders.builder_name(spec, unit, logins, settings)
        objects.append(builders.render_builder(spec, unit, logins, settings, kind))
        args = builders.client_args(spec, unit, logins, settings, address="<builder pod>:1234", kind=kind,
                                    root="<private directory>")
        commands.append(f"  {settings.buildctl} {' '.join(args)}")
    return objects, "\n".join([
        f"ImageBuild {spec.namespace}/{spec.name}: no Job; the operator runs, against the builder (its Secret, with "
        "certificates kiln makes, beside it), with the credentials in DOCKER_CONFIG=<private directory>/docker:",
        *commands])


def _signing_step(spec, settings: Settings) -> str:
    command = " ".join([settings.cosign, *cosign.sign_args(f"{spec.output.image}@<pushed digest>")])
    return (f"ImageBuild {spec.namespace}/{spec.name}: once every Job pushed, the operator signs the image with the key "
            f"in Secret {spec.signing.key_secret} (never mounted in a build pod; key and password in cosign's "
            f"environment):\n  COSIGN_KEY=<{cosign.KEY}> COSIGN_PASSWORD=<{cosign.PASSWORD}> {command}")


def redacted(obj: dict) -> dict:
    """A rendered Secret with every credential replaced, keeping which registries it holds."""
    if obj["kind"] != "Secret":
        return obj
    config = json.loads(base64.b64decode(obj["data"][".dockerconfigjson"]))
    for entry in config["auths"].values():
        entry.update({key: REDACTED for key in ("password", "auth")})
    rest = {k: v for k, v in obj.items() if k != "data"}
    return {**rest, "stringData": {".dockerconfigjson": json.dumps(config, indent=2, sort_keys=True)}}


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors, multi-line strings as literal blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def render_files(paths: list[str], *, show_secrets: bool, out: TextIO, err: TextIO) -> int:
    try:
        objects, steps = render_with_steps(paths, Settings.from_env())
    except RenderError as exc:
        err.write(f"kiln render: {exc}\n")
        return 1
    if not objects:
        err.write("kiln render: no ImageBuild in the given files\n")
        return 1
    shown = objects if show_secrets else [redacted(o) for o in objects]
    yaml.dump_all(shown, out, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    for step in steps:  # YAML comments: the output still applies as it is
        out.write("".join(f"# {line}\n" for line in ["", *step.splitlines()]))
    return 0
