"""python3 -m cluster up | down | status | build [COMPONENT[:GOARCH]...] | image NAME [--push] | kubeconfig | watchdog PID_FILE

up and down need root: they start node agents and make a bridge. image builds the operator image as NAME
into build/kiln-operator.tar, and pushes it with --push (to the local registry: with its login, and its
base beside it).
"""
import sys
from pathlib import Path

from cluster import build, operator_image, up, watchdog
from cluster.versions import COMPONENTS, TOOLS


def main(argv: list[str]) -> None:
    command, names = (argv[0], argv[1:]) if argv else ("up", [])
    if command == "up":
        print(up.up())
    elif command == "down":
        up.down()
    elif command == "status":  # exit 0 when the local cluster is up
        sys.exit(0 if up.is_up() else 1)
    elif command == "build" and names:
        by_name = {c.name: c for c in COMPONENTS + TOOLS}
        wanted = [name.partition(":")[::2] for name in names]  # NAME or NAME:GOARCH
        unknown = [n for n, _ in wanted if n not in by_name]
        if unknown:
            sys.exit(f"unknown component {', '.join(unknown)}; known: {', '.join(by_name)}")
        for name, goarch in wanted:
            print(build.build(by_name[name], goarch or "amd64"))
    elif command == "build":
        build.build_all()
    elif command == "image" and names and set(names[1:]) <= {"--push"}:
        operator_image.build_image(names[0], operator_image.ROOT / "build" / "kiln-operator.tar",
                                   push="--push" in names)
    elif command == "kubeconfig":
        print(up.KUBECONFIG)
    elif command == "watchdog" and len(names) == 1:  # started by up, one per kubelet
        watchdog.watch(Path(names[0]))
    else:
        sys.exit(__doc__)


main(sys.argv[1:])
