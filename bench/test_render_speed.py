"""How fast a build is parsed and rendered (the operator does this on every reconcile)."""
import pathlib

import yaml

from kiln.build.platforms import build_plan
from kiln.build.render import render_build
from kiln.spec.parse import parse_image_build
from kiln.spec.settings import Settings

FIXTURE = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "git-private.yaml"
BUILD = next(d for d in yaml.safe_load_all(FIXTURE.read_text()) if d["kind"] == "ImageBuild")


def test_parse_and_render_one_build(benchmark, figures):
    def run():
        spec = parse_image_build(BUILD)
        return render_build(spec, [], build_plan(spec), Settings())

    objects = benchmark(run)
    assert [o["kind"] for o in objects] == ["Secret", "Job"]
    figures.record("parse and render one build", round(benchmark.stats.stats.mean * 1e6), "µs (mean)")
