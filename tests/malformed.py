"""Malformed specs, judged both by crdcheck.py's emulation (unit tier) and by the real API
server (e2e tier): one table, so the emulation cannot drift from what a cluster refuses."""
import copy

BUILD = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "app", "namespace": "default"},
    "spec": {
        "source": {"git": {"url": "https://example.com/app.git", "revision": "main"}},
        "output": {"image": "registry.example.com/team/app", "tags": ["v1"]},
    },
}
LOGIN = {
    "apiVersion": "kiln.dev/v1alpha1",
    "kind": "RegistryLogin",
    "metadata": {"name": "hub", "namespace": "default"},
    "spec": {"server": "registry.example.com", "secretRef": {"name": "hub-creds"}},
}


def changed(base: dict, **paths) -> dict:
    """A copy of base with dotted paths set (None deletes)."""
    obj = copy.deepcopy(base)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = obj
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


GIT = {"url": "https://example.com/app.git"}
MALFORMED_BUILDS = [
    # (id, spec changes, expected message fragment)
    ("no-spec", {"spec": None}, "spec: Required value"),
    ("no-output", {"spec__output": None}, "spec.output: Required value"),
    ("no-output-image", {"spec__output": {"tags": ["v1"]}}, "spec.output.image: Required value"),
    ("image-with-tag", {"spec__output": {"image": "r.io/app:v1"}}, 'spec.output.image: Invalid value: "r.io/app:v1": spec.output.image in body should match'),
    ("image-uppercase-path", {"spec__output": {"image": "r.io/Team/app"}}, "spec.output.image in body should match"),
    ("tag-with-space", {"spec__output": {"image": "r.io/a", "tags": ["v 1"]}}, "spec.output.tags[0] in body should match"),
    ("empty-tags", {"spec__output": {"image": "r.io/a", "tags": []}}, "spec.output.tags in body should have at least 1 items"),
    ("duplicate-tags", {"spec__output": {"image": "r.io/a", "tags": ["v1", "v1"]}}, "output.tags must be unique"),
    ("push-not-bool", {"spec__output": {"image": "r.io/a", "push": "yes"}}, "spec.output.push in body must be of type boolean"),
    ("no-source", {"spec__source": None}, "spec.source: Required value"),
    ("two-sources", {"spec__source": {"git": GIT, "url": "https://e.com/c.tgz"}}, "exactly one of source.git, source.volume, source.configMap or source.url must be set"),
    ("zero-sources", {"spec__source": {"contextDir": "app"}}, "exactly one of source.git, source.volume, source.configMap or source.url must be set"),
    ("git-url-scheme", {"spec__source": {"git": {"url": "file:///etc"}}}, "spec.source.git.url in body should match"),
    ("git-url-newline", {"spec__source": {"git": {"url": "https://e.com/a\n--x"}}}, "spec.source.git.url in body should match"),
    ("volume-without-claim", {"spec__source": {"volume": {"path": "ws"}}}, "spec.source.volume.claimName: Required value"),
    ("volume-path-escapes", {"spec__source": {"volume": {"claimName": "ws", "path": "../etc"}}}, "source.volume.path must be relative and must not contain '..'"),
    ("absolute-context-dir", {"spec__source": {"git": GIT, "contextDir": "/etc"}}, "source.contextDir must be relative and must not contain '..'"),
    ("dockerfile-escapes", {"spec__source": {"git": GIT, "dockerfile": "a/../../Dockerfile"}}, "source.dockerfile must be relative and must not contain '..'"),
    ("context-dir-in-tarball", {"spec__source": {"url": "https://e.com/c.tgz", "contextDir": "sub"}}, "source.contextDir is only supported with source.git and source.volume"),
    ("git-url-with-token", {"spec__source": {"git": {"url": "https://user:TOKEN@git.example/r.git"}}}, "source.git.url must not carry credentials"),
    ("git-url-with-token-as-user", {"spec__source": {"git": {"url": "https://ghp_TOKEN@git.example/r.git"}}}, "source.git.url must not carry credentials"),
    ("ssh-url-with-password", {"spec__source": {"git": {"url": "ssh://git:secret@git.example/r.git"}}}, "source.git.url must not carry credentials"),
    ("tarball-url-with-credentials", {"spec__source": {"url": "https://u:p@files.example/c.tgz"}}, "source.url must not carry credentials"),
    ("git-url-token-in-query", {"spec__source": {"git": {"url": "https://g.example/r.git?private_token=glpat-x"}}}, "source.git.url must not carry a credential in its query"),
    ("tarball-presigned-s3-url", {"spec__source": {"url": "https://b.s3.amazonaws.com/c.tgz?X-Amz-Credential=a&X-Amz-Signature=b"}}, "source.url must not carry a credential in its query"),
    ("tarball-azure-sas-url", {"spec__source": {"url": "https://a.blob.core.windows.net/c/c.tgz?sv=1&SIG=x"}}, "source.url must not carry a credential in its query"),
    ("git-host-is-an-option", {"spec__source": {"git": {"url": "ssh://-oProxyCommand=id/r.git"}}}, "source.git.url: the host must not start with '-'"),
    ("git-scp-host-is-an-option", {"spec__source": {"git": {"url": "git@-oProxyCommand=id:r.git"}}}, "source.git.url: the host must not start with '-'"),
    ("tarball-host-is-an-option", {"spec__source": {"url": "https://-x.example/c.tgz"}}, "source.url: the host must not start with '-'"),
    ("git-url-with-fragment", {"spec__source": {"git": {"url": "https://e.com/a.git#main:/etc"}}}, "spec.source.git.url in body should match"),
    ("revision-with-colon", {"spec__source": {"git": {"url": "https://e.com/a.git", "revision": "main:sub"}}}, "spec.source.git.revision in body should match"),
    ("tarball-not-http", {"spec__source": {"url": "ftp://e.com/c.tgz"}}, "spec.source.url in body should match"),
    ("wrong-platform-string", {"spec__platforms": ["linux-amd64"]}, "spec.platforms[0] in body should match"),
    ("platform-uppercase", {"spec__platforms": ["Linux/AMD64"]}, "spec.platforms[0] in body should match"),
    ("duplicate-platforms", {"spec__platforms": ["linux/amd64", "linux/amd64"]}, "platforms must be unique"),
    ("empty-platforms", {"spec__platforms": []}, "spec.platforms in body should have at least 1 items"),
    ("unknown-strategy", {"spec__platforms": ["linux/amd64"], "spec__multiArch": {"strategy": "docker"}}, 'spec.multiArch.strategy: Unsupported value: "docker": supported values: "qemu", "native", "auto"'),
    ("multiarch-without-platforms", {"spec__multiArch": {"strategy": "native"}}, "multiArch needs spec.platforms"),
    ("unknown-cache-type", {"spec__cache": {"type": "s3"}}, 'spec.cache.type: Unsupported value: "s3"'),
    ("local-cache-with-native-builders", {"spec__platforms": ["linux/amd64", "linux/arm64"], "spec__multiArch": {"strategy": "native"},
                                          "spec__cache": {"type": "local", "volume": {"claimName": "c"}}},
     "cache.type local keeps one builder's state, and native or auto builds run several builders"),
    ("warm-builder-with-workspace-volume", {"spec__builder": {"warm": True}, "spec__source": {"volume": {"claimName": "ws"}}},
     "a warm builder cannot read a workspace volume"),
    ("local-cache-without-volume", {"spec__cache": {"type": "local"}}, "cache.volume is required when cache.type is local"),
    ("volume-on-registry-cache", {"spec__cache": {"type": "registry", "volume": {"claimName": "c"}}}, "cache.volume is only used when cache.type is local"),
    ("ref-on-inline-cache", {"spec__cache": {"type": "inline", "ref": "r.io/a:cache"}}, "cache.ref is only used when cache.type is registry"),
    ("mode-on-local-cache", {"spec__cache": {"type": "local", "mode": "max", "volume": {"claimName": "c"}}}, "cache.mode is only used when cache.type is registry"),
    ("import-refs-without-cache", {"spec__cache": {"type": "none", "importRefs": ["r.io/a:c"]}}, "cache.importRefs cannot be used when cache.type is none"),
    ("cache-ref-without-tag", {"spec__cache": {"ref": "r.io/a"}}, "spec.cache.ref in body should match"),
    ("unknown-cache-mode", {"spec__cache": {"mode": "all"}}, 'spec.cache.mode: Unsupported value: "all"'),
    ("negative-timeout", {"spec__timeout": "-5m"}, "spec.timeout in body should match"),
    ("zero-timeout", {"spec__timeout": "0m"}, "timeout must be a positive duration"),
    ("timeout-as-number", {"spec__timeout": 600}, "spec.timeout in body must be of type string"),
    ("negative-retries", {"spec__retries": -1}, "spec.retries in body should be greater than or equal to 0"),
    ("zero-history", {"spec__historyLimit": 0}, "spec.historyLimit in body should be greater than or equal to 1"),
    ("build-arg-not-string", {"spec__buildArgs": {"N": 1}}, "spec.buildArgs.N in body must be of type string"),
    ("build-arg-with-nul", {"spec__buildArgs": {"N": "a\x00b"}}, "spec.buildArgs.N in body should match"),
    ("duplicate-secret-ids", {"spec__secrets": [{"id": "npm", "secretRef": {"name": "a", "key": "k"}}, {"id": "npm", "secretRef": {"name": "b", "key": "k"}}]}, "secrets ids must be unique"),
    ("secret-without-key", {"spec__secrets": [{"id": "npm", "secretRef": {"name": "a"}}]}, "spec.secrets[0].secretRef.key: Required value"),
    ("duplicate-login-names", {"spec__registryLogins": ["a", "a"]}, "registryLogins must not name a login twice"),
    ("unknown-field", {"spec__outputs": {"image": "r.io/a"}}, 'unknown field "spec.outputs"'),
    ("bad-toleration-operator", {"spec__builder": {"tolerations": [{"operator": "In"}]}}, 'spec.builder.tolerations[0].operator: Unsupported value: "In"'),
    ("bad-quantity", {"spec__builder": {"resources": {"limits": {"memory": "4 gigs"}}}}, "spec.builder.resources.limits.memory in body should match"),
    ("negative-quantity", {"spec__builder": {"resources": {"requests": {"memory": "-1Gi"}}}}, "spec.builder.resources.requests.memory in body should match"),
    ("target-with-space", {"spec__target": "my stage"}, "spec.target in body should match"),
    ("unknown-provenance-mode", {"spec__attestations": {"provenance": "full"}}, 'spec.attestations.provenance: Unsupported value: "full"'),
    ("sbom-generator-not-an-image", {"spec__attestations": {"sbom": {"generator": "not an image"}}}, "spec.attestations.sbom.generator in body should match"),
    ("sbom-scan-stages-not-bool", {"spec__attestations": {"sbom": {"scanStages": "yes"}}}, "spec.attestations.sbom.scanStages in body must be of type boolean"),
    ("signing-without-cosign", {"spec__signing": {}}, "spec.signing.cosign: Required value"),
    ("signing-without-key", {"spec__signing": {"cosign": {}}}, "spec.signing.cosign.keySecretRef: Required value"),
    ("signing-an-unpushed-image", {"spec__output": {"image": "r.io/a", "push": False}, "spec__signing": {"cosign": {"keySecretRef": {"name": "k"}}}},
     "signing needs the image pushed (spec.output.push is false)"),
]


MALFORMED_LOGINS = [
    ("no-server", {"spec__server": None}, "spec.server: Required value"),
    ("server-with-space", {"spec__server": "my registry"}, "spec.server in body should match"),
    ("server-with-credentials", {"spec__server": "http://bob:bpass@127.0.0.1:5002"}, "spec.server in body should match"),
    ("server-port-out-of-range", {"spec__server": "registry.example.com:99999"}, "spec.server in body should match"),
    ("no-secret-ref", {"spec__secretRef": None}, "spec.secretRef: Required value"),
    ("verify-not-bool", {"spec__verify": "no"}, "spec.verify in body must be of type boolean"),
    ("insecure-with-ca", {"spec__insecure": True, "spec__caBundle": {"name": "ca"}}, "caBundle has no effect with insecure=true"),
]
