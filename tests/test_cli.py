"""`kiln run` without a cluster explains itself instead of printing a traceback."""
import subprocess
import sys


def test_run_without_a_cluster_says_what_to_do_instead(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: x, context: {cluster: x}}]\nusers: []\n"
    )
    result = subprocess.run([sys.executable, "-m", "kiln", "run"], capture_output=True, text=True, timeout=60,
                            env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "cannot reach a Kubernetes cluster" in result.stderr
    assert "https://127.0.0.1:9" in result.stderr
    assert "kiln render" in result.stderr and "kind create cluster" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_any_kube_context_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kiln", "run"], capture_output=True, text=True, timeout=60,
                            env={"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no kube context" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_namespaces_kiln_run_serves_are_read_from_every_spelling_kopf_accepts():
    from kiln.cli import served_namespaces

    assert served_namespaces(["-n", "a", "--namespace", "b", "--namespace=c", "-nd", "--verbose"]) == ["a", "b", "c", "d"]
    assert served_namespaces(["--all-namespaces", "--standalone"]) == []
