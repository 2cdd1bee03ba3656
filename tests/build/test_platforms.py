"""Which nodes auto may build natively on, as a table: a node kiln counts must be one its pod can land on."""
import pytest

from kiln.build.platforms import build_plan, schedulable_archs
from kiln.spec.parse import parse_image_build


def node(arch: str, ready: bool = True, cordoned: bool = False, labels: dict | None = None,
         taints: list[dict] | None = None) -> dict:
    return {"metadata": {"name": f"n-{arch}", "labels": {"kubernetes.io/arch": arch, **(labels or {})}},
            "spec": {**({"unschedulable": True} if cordoned else {}), **({"taints": taints} if taints else {})},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def spec(**builder):
    return parse_image_build({"metadata": {"name": "app", "namespace": "team"}, "spec": {
        "source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "r.example/app"},
        "platforms": ["linux/amd64", "linux/arm64"], "multiArch": {"strategy": "auto"}, "builder": builder}})


BUILDS = {"dedicated": {"key": "dedicated", "operator": "Equal", "value": "builds", "effect": "NoSchedule"}}
TAINT = {"key": "dedicated", "value": "builds", "effect": "NoSchedule"}


@pytest.mark.parametrize(("nodes", "builder", "archs"), [
    ([node("amd64"), node("arm64")], {}, {"amd64", "arm64"}),
    ([node("amd64"), node("arm64", ready=False)], {}, {"amd64"}),
    ([node("amd64"), node("arm64", cordoned=True)], {}, {"amd64"}),  # drained for maintenance
    ([node("amd64"), node("arm64", labels={"pool": "builds"})], {"nodeSelector": {"pool": "builds"}}, {"arm64"}),
    ([node("amd64"), node("arm64", taints=[TAINT])], {}, {"amd64"}),  # a taint the build does not tolerate
    ([node("amd64"), node("arm64", taints=[TAINT])], {"tolerations": [BUILDS["dedicated"]]}, {"amd64", "arm64"}),
    ([node("arm64", taints=[{**TAINT, "value": "gpu"}])], {"tolerations": [BUILDS["dedicated"]]}, set()),
    ([node("arm64", taints=[{**TAINT, "effect": "PreferNoSchedule"}])], {}, {"arm64"}),  # a preference only
    ([node("arm64", taints=[TAINT])], {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}, {"arm64"}),
], ids=["both", "not-ready", "cordoned", "node-selector", "untolerated-taint", "tolerated-taint", "other-value",
        "prefer-no-schedule", "exists"])
def test_auto_counts_only_nodes_a_build_pod_can_be_scheduled_on(nodes, builder, archs):
    assert schedulable_archs(nodes, spec(**builder)) == archs


def test_a_platform_whose_only_node_is_cordoned_is_emulated_not_left_unschedulable():
    build = spec()
    plan = build_plan(build, schedulable_archs([node("amd64"), node("arm64", cordoned=True)], build))
    assert [(u.platforms, u.arch) for u in plan] == [(("linux/amd64",), "amd64"), (("linux/arm64",), None)]


@pytest.mark.parametrize(("archs", "pinned"), [({"amd64", "arm64"}, "arm64"), ({"amd64"}, None)])
def test_one_platform_is_built_on_its_own_architecture_when_a_node_of_it_can_take_the_pod(archs, pinned):
    """Not emulated on whichever node the scheduler picks: linux/arm64 under QEMU on amd64 is many times slower."""
    one = parse_image_build({"metadata": {"name": "app", "namespace": "team"}, "spec": {
        "source": {"git": {"url": "https://git.example/app.git"}}, "output": {"image": "r.example/app"},
        "platforms": ["linux/arm64"]}})
    (unit,) = build_plan(one, frozenset(archs))
    assert (unit.platforms, unit.arch, unit.key, unit.built_by) == (("linux/arm64",), pinned, "",
                                                                    "native" if pinned else "qemu")
