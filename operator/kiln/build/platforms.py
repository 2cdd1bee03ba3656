"""Which pods build which platforms (pure): the platforms part of the resolve step.

qemu builds every platform in one pod; native runs one pod per platform on nodes
of that architecture; auto goes native where Ready nodes of the architecture exist
and emulates the rest in one more pod. More than one pod means each pushes by
digest and the operator assembles the index.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.spec.parse import BuildSpec, InvalidSpec

_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class BuildUnit:
    platforms: tuple[str, ...]
    arch: str | None = None  # kubernetes.io/arch the pod must run on; None: any node, QEMU for the rest
    key: str = ""  # suffix that tells this unit's Job apart; "" when it is the only one

    @property
    def by_digest(self) -> bool:
        """One pod of several: it pushes by digest, and the operator assembles the index and tags it."""
        return bool(self.key)

    @property
    def built_by(self) -> str:
        """native when pinned to nodes of its architecture (or building just the node's own); qemu otherwise."""
        return "native" if self.arch or not self.platforms else "qemu"


def node_arch(platform: str) -> str:
    return platform.split("/")[1]


def build_plan(spec: BuildSpec, ready_archs: frozenset[str] = frozenset()) -> tuple[BuildUnit, ...]:
    """The units of a build. ready_archs: the architectures its pod can be scheduled on now (auto, and one
    platform: built where it is native when it can be, rather than emulated wherever the pod lands)."""
    if len(spec.platforms) == 1 and node_arch(spec.platforms[0]) in ready_archs:
        return (BuildUnit(spec.platforms, node_arch(spec.platforms[0])),)
    if spec.strategy == "qemu" or not spec.platforms:
        return (BuildUnit(spec.platforms),)
    native = [p for p in spec.platforms if spec.strategy == "native" or node_arch(p) in ready_archs]
    emulated = tuple(p for p in spec.platforms if p not in native)
    units = [BuildUnit((p,), node_arch(p), p.split("/", 1)[1].replace("/", "")) for p in native]
    if emulated:
        units.append(BuildUnit(emulated, None, "emulated"))
    if len(units) == 1:
        return (BuildUnit(units[0].platforms, units[0].arch),)
    if spec.cache.type == "local":
        raise InvalidSpec("spec.cache.type", "local cache holds one builder's state and cannot serve several "
                                             "native builder pods; use registry cache or multiArch.strategy qemu")
    return tuple(units)


def schedulable_archs(nodes: list[dict], spec: BuildSpec) -> frozenset[str]:
    """The architectures of the nodes a build pod of this spec can run on now: Ready, not cordoned, matching
    spec.builder.nodeSelector, every NoSchedule and NoExecute taint tolerated. auto goes native only there:
    a unit pinned to an architecture no such node has would wait Unschedulable instead of being emulated."""
    found = set()
    for node in nodes:
        meta, node_spec = node.get("metadata") or {}, node.get("spec") or {}
        node_labels = meta.get("labels") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        if not ready or node_spec.get("unschedulable"):
            continue
        if any(node_labels.get(key) != value for key, value in spec.builder.node_selector):
            continue
        taints = [t for t in node_spec.get("taints") or [] if t.get("effect") in _BLOCKING_EFFECTS]
        if all(any(_tolerates(toleration, taint) for toleration in spec.builder.tolerations) for taint in taints):
            found.add(node_labels.get("kubernetes.io/arch", ""))
    return frozenset(found - {""})


def _tolerates(toleration: dict, taint: dict) -> bool:
    """Kubernetes' rule: the key (an empty key with Exists matches any), the value unless Exists, the effect if set."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key", "") and toleration["key"] != taint.get("key"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("key")) and toleration.get("value", "") == taint.get("value", "")
