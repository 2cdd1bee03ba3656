"""Command line: `kiln run` starts the operator, `kiln render` prints what it would create; `kiln status`,
`kiln logs` and `kiln build` show a build, its logs, and ask for a new one (also as `kubectl kiln ...`)."""
from __future__ import annotations

import argparse
import sys

from kiln import __version__

NO_CLUSTER_HELP = """\
kiln: cannot reach a Kubernetes cluster: {problem}

kiln run needs a cluster (the current kube context, or in-cluster credentials).
  - For a local cluster: `make run` in kiln's checkout starts one (`make cluster`), or: kind create cluster
  - To see what kiln would create without a cluster: kiln render -f manifests/samples/
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kiln", description="kiln builds container images in Kubernetes with BuildKit and pushes them to registries.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="start the operator; options after `run` go to `kopf run`",
        description="Start the operator against the current kube context. Other options pass to `kopf run`.",
    )
    run.add_argument("--skip-cluster-check", action="store_true", help="start even if the cluster does not answer")
    render = commands.add_parser(
        "render", help="print every object the operator would create, as YAML",
        description="Print, as YAML, every object the operator would create for the ImageBuilds in the files. "
                    "Needs no cluster and contacts no registry; RegistryLogins are taken as Ready.")
    render.add_argument("-f", "--filename", action="append", required=True, metavar="FILE_OR_DIR",
                        help="YAML with ImageBuilds, RegistryLogins, Secrets and ConfigMaps (repeatable; - reads stdin)")
    render.add_argument("--show-secrets", action="store_true", help="print credentials instead of redacting them")
    _build_commands(commands)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        sys.exit(run_operator(extra, check=not args.skip_cluster_check))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "render":
        from kiln.render_cli import render_files

        sys.exit(render_files(args.filename, show_secrets=args.show_secrets, out=sys.stdout, err=sys.stderr))
    sys.exit(run_build_command(args))


def _build_commands(commands) -> None:
    """status, logs and build: about one ImageBuild, in the current kube context and namespace, as kubectl's."""
    def command(name: str, help_text: str):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("name", help="the ImageBuild")
        sub.add_argument("-n", "--namespace", help="its namespace (default: the kube context's)")
        sub.add_argument("--context", help="the kube context to use (default: the current one)")
        return sub

    command("status", "print an ImageBuild's phase, digest, platforms, cache use and failure; exit 0 when Ready")
    logs = command("logs", "print a build's log: kept ones for pods that ended, live ones for pods running")
    logs.add_argument("--build", metavar="ID", help="which build (default: the current one; see status.history)")
    logs.add_argument("-f", "--follow", action="store_true", help="follow every pod of the build until it ends; "
                                                                   "exit 0 if it succeeded")
    logs.add_argument("--steps", action="store_true", help="only BuildKit's steps, each as it completes")
    build = command("build", "build the ImageBuild's spec again (the kiln.dev/rebuild annotation)")
    build.add_argument("--wait", action="store_true", help="wait for the build's result; exit 0 if it succeeded")
    build.add_argument("-f", "--follow", action="store_true", help="follow its logs until it ends (implies --wait)")
    build.add_argument("--steps", action="store_true", help="with --follow: only BuildKit's steps")


def run_build_command(args) -> int:
    import asyncio

    import aiohttp

    from kiln import builds_cli
    from kiln.clients.kube import Kube, KubeError, cluster_problem, context_namespace, load_config

    try:
        load_config(args.context)
    except Exception as exc:  # no kubeconfig, an unknown context: kubectl's own words are the clearest
        sys.stderr.write(f"kiln: cannot use the kube context: {exc}\n")
        return 2
    problem = cluster_problem(context=args.context)
    if problem:
        sys.stderr.write(f"kiln: cannot reach the cluster: {problem}\n")
        return 2

    async def run() -> int:
        kube = Kube()
        term = builds_cli.Terminal(kube, args.namespace or context_namespace(args.context))
        try:
            if args.command == "status":
                return await builds_cli.status(term, args.name)
            if args.command == "logs":
                return await builds_cli.logs(term, args.name, args.build, args.follow, args.steps)
            return await builds_cli.rebuild(term, args.name, args.wait, args.follow, args.steps)
        finally:
            await kube.close()

    try:
        return asyncio.run(run())
    except builds_cli.Problem as exc:
        sys.stderr.write(f"kiln: {exc}\n")
        return exc.code
    except KubeError as exc:  # RBAC's refusal, say: the API server's words
        sys.stderr.write(f"kiln: the API server refused: {exc}\n")
        return 1
    except (OSError, aiohttp.ClientError) as exc:
        sys.stderr.write(f"kiln: lost the cluster: {type(exc).__name__}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        follow = f"kiln logs {args.name} -f" + (f" -n {args.namespace}" if args.namespace else "")
        sys.stderr.write(f"\nkiln: stopped; the build goes on (follow it again: {follow})\n")
        return 130


def kopf_argv(extra: list[str]) -> list[str]:
    """`kopf run` arguments for kiln's handlers: all namespaces unless the options name some."""
    scoped = any(a in ("-A", "--all-namespaces") or a.startswith(("-n", "--namespace")) for a in extra)
    return ["run", "-m", "kiln.controller.handlers", *([] if scoped else ["--all-namespaces"]), *extra]


def served_namespaces(extra: list[str]) -> list[str]:
    """The namespaces `-n NS`, `--namespace NS` or `--namespace=NS` name (none: every namespace)."""
    found = []
    for i, arg in enumerate(extra):
        if arg in ("-n", "--namespace") and i + 1 < len(extra):
            found.append(extra[i + 1])
        elif arg.startswith("--namespace="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-n") and len(arg) > 2:
            found.append(arg[2:])
    return found


def wait_until_served(namespaces: tuple[str, ...], every: float = 2.0) -> None:
    """Until the API server serves ImageBuilds and RegistryLogins: CRDs applied with the operator become
    established a moment later, and an API server just started answers 429 for a while. One line for each new
    reason to wait, not a traceback."""
    import time

    from kiln.clients.kube import serving_problem

    said = None
    while problem := serving_problem(namespaces):
        if problem != said:
            sys.stderr.write(f"kiln run: waiting: {problem}\n")
            said = problem
        time.sleep(every)
    if said:
        sys.stderr.write("kiln run: the API server serves imagebuilds and registrylogins; starting\n")


def run_operator(kopf_args: list[str], check: bool = True) -> int:
    if check:
        from kiln.clients.kube import cluster_problem

        problem = cluster_problem()
        if problem:
            sys.stderr.write(NO_CLUSTER_HELP.format(problem=problem))
            return 2
    import os

    import kopf.cli

    namespaces = served_namespaces(kopf_args)
    if check:
        wait_until_served(tuple(namespaces))
    if namespaces:  # the handlers serve only these (the resync too), and kopf scans for nothing more
        os.environ["KILN_NAMESPACES"] = ",".join(namespaces)
    try:
        kopf.cli.main.main(args=kopf_argv(kopf_args), prog_name="kiln run", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
