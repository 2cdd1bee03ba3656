"""One definition of a valid spec: the parser refuses exactly what the CRD (schema and CEL) refuses.

Hypothesis generates specs around every bound (lengths, counts, enums, patterns, quantities, ports
1-65535, durations) and both judges rule on each: crdcheck.errors (the API server's checks, CEL by
cel-python) and parse_*. The one rule the CRD cannot express is named below: the API server cannot
afford a regex over the keys of a map, so build argument names are checked by the parser alone.
"""
from __future__ import annotations

import copy
import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.spec.parse import InvalidSpec, parse_image_build, parse_registry_login

from crdcheck import errors
from malformed import BUILD, LOGIN

ONLY_THE_PARSER = re.compile(r"^spec\.buildArgs\.")  # key names: no CEL rule can afford a regex over map keys
# and hosts that are metadata services in any spelling (decimal, hex, octal, mapped IPv6): no regex says them all
PARSER_ONLY_MESSAGE = "link-local or cloud metadata address"
SETTINGS = settings(max_examples=int(os.environ.get("KILN_PARITY_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to the patterns: letters of both cases, digits, separators, and what must never pass.
_CHARS = st.sampled_from(list("aZ09.-_/:@# \n") + ["é", "\u0430"])
text = st.one_of(st.text(_CHARS, max_size=12), st.text(alphabet="ab", min_size=120, max_size=130),
                 st.builds(lambda n: "a" * n, st.sampled_from([0, 1, 63, 64, 127, 128, 129, 253, 254, 255, 256, 512, 513,
                                                               640, 641, 1024, 1025, 2048, 2049])))
hosts = st.one_of(st.sampled_from(["r.example", "registry.example.com", "127.0.0.1", "localhost", "[::1]", "REG.example",
                                   "-bad.example", "a" * 300]),
                  st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["r.example", "127.0.0.1"]),
                            st.sampled_from([0, 1, 80, 5000, 65535, 65536, 99999, 123456])))
repositories = st.sampled_from(["team/app", "app", "Team/app", "team//app", "team/app:v1", "team/app@sha256:ab", "a" * 300,
                                "t/" + "b" * 120, "team/a__b", "team/a-b.c"])
images = st.one_of(repositories, st.builds(lambda h, r: f"{h}/{r}", hosts, repositories))
tags = st.one_of(st.sampled_from(["v1", "latest", "1.0", "-v", "v 1", "a" * 128, "a" * 129, "_x", ".x"]), text)
quantities = st.one_of(st.sampled_from(["1", "500m", "2Gi", "1.5", "4 gigs", "lots", "1e3", "-1", "+2", "1Ki", "0.5Mi"]),
                       st.integers(-5, 10**6), text)
durations = st.one_of(st.sampled_from(["30m", "1h30m", "45s", "0m", "-5m", "1d", "", "10", "2h", "0h0m1s"]), text,
                      st.integers(0, 100))
platforms = st.one_of(st.sampled_from(["linux/amd64", "linux/arm64", "linux/arm/v7", "Linux/AMD64", "linux-amd64",
                                       "linux/riscv64", "windows/amd64"]), text)


def _lists(elements, limit: int):
    """Lists around a maxItems bound: empty, a few, exactly the bound, one more."""
    return st.one_of(st.lists(elements, max_size=4), st.lists(elements, min_size=limit, max_size=limit + 1))


FIELDS = {
    "output": st.fixed_dictionaries({"image": images}, optional={"tags": _lists(tags, 32), "push": st.booleans()}),
    "platforms": _lists(platforms, 16),
    "multiArch": st.fixed_dictionaries({"strategy": st.sampled_from(["qemu", "native", "auto", "docker"])}),
    "buildArgs": st.dictionaries(st.sampled_from(["A", "B_1", "x"]), st.one_of(text, st.integers()), max_size=3),
    "target": text,
    "timeout": durations,
    "retries": st.integers(-2, 12),
    "historyLimit": st.integers(-1, 102),
    "suspend": st.one_of(st.booleans(), st.just("yes")),
    "cache": st.fixed_dictionaries({"type": st.sampled_from(["registry", "inline", "none", "local", "s3"])},
                                   optional={"ref": st.builds(lambda i, t: f"{i}:{t}", images, tags),
                                             "mode": st.sampled_from(["max", "min", "all"]),
                                             "importRefs": _lists(st.builds(lambda i, t: f"{i}:{t}", images, tags), 8),
                                             "volume": st.fixed_dictionaries({"claimName": st.sampled_from(["c", "C", "a" * 254])})}),
    "registryLogins": _lists(st.sampled_from(["a", "b", "A", "a" * 254]), 32),
    "builder": st.fixed_dictionaries({}, optional={
        "resources": st.fixed_dictionaries({}, optional={
            "limits": st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), quantities, max_size=3),
            "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities, max_size=2)}),
        "nodeSelector": st.dictionaries(st.sampled_from(["kiln.dev/builder", "zone"]), st.one_of(text, st.integers()),
                                        max_size=2),
        "tolerations": _lists(st.fixed_dictionaries({}, optional={
            "key": text, "operator": st.sampled_from(["Exists", "Equal", "In"]), "value": text,
            "effect": st.sampled_from(["NoSchedule", "NoExecute", "Sometimes"]),
            "tolerationSeconds": st.one_of(st.integers(-1, 31536001), st.just("soon"))}), 32),
        "serviceAccountName": st.sampled_from(["builder", "Builder", "a" * 254]),
        "userNamespaces": st.one_of(st.booleans(), st.just(1))}),
    "source": st.one_of(
        st.fixed_dictionaries({"git": st.fixed_dictionaries(
            {"url": st.one_of(st.builds(lambda h: f"https://{h}/r.git", hosts),
                              st.sampled_from(["https://u:t@g.example/r.git", "ssh://git@g.example/r.git",
                                               "ssh://git:pw@g.example/r.git", "git@g.example:r.git", "file:///etc"]))},
            optional={"revision": text})}, optional={"contextDir": text, "dockerfile": text}),
        st.fixed_dictionaries({"url": st.one_of(st.builds(lambda h: f"https://{h}/c.tgz", hosts),
                                                st.just("https://u:p@f.example/c.tgz"))}),
        st.fixed_dictionaries({"configMap": st.fixed_dictionaries({"name": st.sampled_from(["ctx", "Ctx", "a" * 254])})})),
}
# One or two fields changed at a time, so that most specs are wrong in one place only, or not at all.
SPEC_CHANGES = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: FIELDS[name] for name in names}))


def _verdicts(kind: str, obj: dict, parse) -> tuple[list[str], InvalidSpec | None]:
    try:
        parse(obj)
        refused = None
    except InvalidSpec as exc:
        refused = exc
    return errors(kind, obj), refused


@SETTINGS
@given(SPEC_CHANGES)
def test_the_parser_and_the_crd_refuse_the_same_image_builds(changes):
    obj = copy.deepcopy(BUILD)
    obj["metadata"].update(uid="uid-1", generation=1)
    obj["spec"].update(changes)
    crd, parser = _verdicts("ImageBuild", obj, parse_image_build)
    if crd:  # whatever the API server refuses, the parser refuses
        assert parser is not None, f"the CRD refuses {crd[0]!r}, the parser accepts"
    elif parser is not None:  # and it refuses nothing more but the one rule the CRD cannot express
        assert ONLY_THE_PARSER.match(parser.field) or PARSER_ONLY_MESSAGE in parser.message, \
            f"the CRD accepts, the parser says {parser}"


@SETTINGS
@given(st.fixed_dictionaries({"server": st.one_of(hosts, st.builds(lambda h: f"https://{h}/v1/", hosts),
                                                  st.sampled_from(["http://bob:bpass@127.0.0.1:5002", "docker.io", ""]),
                                                  text)},
                             optional={"insecure": st.one_of(st.booleans(), st.just("yes")),
                                       "verify": st.booleans(),
                                       "caBundle": st.fixed_dictionaries({"name": st.sampled_from(["ca", "a" * 254])},
                                                                         optional={"key": text})}))
def test_the_parser_and_the_crd_refuse_the_same_registry_logins(changes):
    obj = copy.deepcopy(LOGIN)
    obj["spec"].update(changes)
    crd, parser = _verdicts("RegistryLogin", obj, parse_registry_login)
    assert bool(crd) == (parser is not None), (crd, parser)
