"""`kiln run` (and the commands about one build) without a cluster explain themselves instead of printing a
traceback."""
import contextlib
import http.server
import json
import subprocess
import sys
import threading

import pytest

from conftest import VERSION

NOWHERE = "https://127.0.0.1:9"  # nothing listens there


def kubeconfig_for(tmp_path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\n"
                    f"clusters: [{{name: x, cluster: {{server: '{server}'}}}}]\n"
                    "contexts: [{name: x, context: {cluster: x, namespace: team}}]\nusers: []\n")
    return str(path)


def kiln(kubeconfig: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60,
                          env={"KUBECONFIG": kubeconfig, "PATH": "/usr/bin:/bin"})


@contextlib.contextmanager
def api_server(answer):
    """An HTTP server on loopback answering GET path with answer(path) -> (status, JSON body); its URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            status, document = answer(self.path)
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_run_without_a_cluster_says_what_to_do_instead(tmp_path):
    result = kiln(kubeconfig_for(tmp_path, NOWHERE), "run")
    assert result.returncode == 2
    assert "cannot reach a Kubernetes cluster" in result.stderr
    assert NOWHERE in result.stderr
    assert "kiln render" in result.stderr and "kind create cluster" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_any_kube_context_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kiln", "run"], capture_output=True, text=True, timeout=60,
                            env={"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no kube context" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["status", "app"], ["logs", "app", "-f"], ["build", "app", "--follow"]])
def test_the_build_commands_without_a_cluster_exit_2_with_one_line(tmp_path, command):
    kubeconfig = kubeconfig_for(tmp_path, NOWHERE)
    result = kiln(kubeconfig, *command)
    assert result.returncode == 2
    assert result.stderr.startswith(f"kiln: cannot reach the cluster: the API server at {NOWHERE} did not answer")
    assert len(result.stderr.splitlines()) == 1
    unknown = kiln(kubeconfig, *command, "--context", "nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("kiln: cannot use the kube context:")


def test_the_namespaces_kiln_run_serves_are_read_from_every_spelling_kopf_accepts():
    from kiln.cli import served_namespaces

    assert served_namespaces(["-n", "a", "--namespace", "b", "--namespace=c", "-nd", "--verbose"]) == ["a", "b", "c", "d"]
    assert served_namespaces(["--all-namespaces", "--standalone"]) == []


def test_kiln_run_waits_for_its_kinds_to_be_served_with_one_line_per_reason_and_no_traceback(tmp_path, capsys):
    """The CRDs applied with the operator are established a moment later, and an API server just started answers
    429 ("storage is (re)initializing") for a while: kiln waits, saying why once, instead of a traceback."""
    import kubernetes

    from kiln.cli import wait_until_served

    answers = [429, 429, 404, 404, 404, 200, 200]
    seen = []

    def answer(path):
        status = answers.pop(0) if len(answers) > 2 else 200
        seen.append((path.split("?")[0], status))
        return status, {"kind": "List", "items": [], "metadata": {}} if status == 200 else \
            {"kind": "Status", "message": "storage is (re)initializing"}

    with api_server(answer) as url:
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        kubernetes.client.Configuration.set_default(configuration)
        try:
            wait_until_served((), every=0.01)
        finally:
            kubernetes.client.Configuration.set_default(None)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["kiln run: waiting: the API server is still starting (HTTP 429: Too Many Requests)",
                     "kiln run: waiting: imagebuilds.kiln.dev is not served (HTTP 404): its CRD is not installed or "
                     "not yet established",
                     "kiln run: the API server serves imagebuilds and registrylogins; starting"]
    assert seen[-2:] == [("/apis/kiln.dev/v1alpha1/imagebuilds", 200), ("/apis/kiln.dev/v1alpha1/registrylogins", 200)]


def test_a_refusal_by_the_api_server_is_one_line_not_a_traceback(tmp_path):
    """RBAC that does not let the user read ImageBuilds: kiln says what the API server said, exit 1."""
    refusal = {"kind": "Status", "message": 'imagebuilds.kiln.dev "app" is forbidden: User "dev" cannot get'}
    with api_server(lambda path: (200, VERSION) if path.startswith("/version") else (403, refusal)) as url:
        result = kiln(kubeconfig_for(tmp_path, url), "status", "app")
    assert result.returncode == 1
    assert result.stderr == 'kiln: the API server refused: HTTP 403: imagebuilds.kiln.dev "app" is forbidden: User "dev" cannot get\n'
