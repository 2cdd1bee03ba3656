import pathlib

import yaml

ROOT = pathlib.Path(__file__).parent.parent
SAMPLES = ROOT / "manifests" / "samples"


def load_yaml_docs(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
