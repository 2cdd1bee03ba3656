"""Memory to hold the rendered objects of many builds (what one reconcile round touches), via tracemalloc."""
import copy
import pathlib
import tracemalloc

import yaml

from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

FIXTURE = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "git-private.yaml"
BUILD = next(d for d in yaml.safe_load_all(FIXTURE.read_text()) if d["kind"] == "ImageBuild")
COUNT = 1000


def builds() -> list[dict]:
    out = []
    for i in range(COUNT):
        doc = copy.deepcopy(BUILD)
        doc["metadata"].update(name=f"app-{i}", uid=f"uid-{i}")
        out.append(doc)
    return out


def test_memory_of_rendering_a_thousand_builds(benchmark, figures):
    docs = builds()

    def run():
        tracemalloc.start()
        rendered = [render_build(spec, [], build_plan(spec), Settings()) for spec in map(parse_image_build, docs)]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return rendered, peak

    rendered, peak = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["peak_bytes_per_build"] = peak // COUNT
    figures.record(f"memory to render {COUNT} builds, per build", round(peak / COUNT / 1024, 1), "KiB (tracemalloc peak)")
    assert len({objects[-1]["metadata"]["name"] for objects in rendered}) == COUNT  # every build its own Job
