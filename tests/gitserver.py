"""A private git repository over smart HTTP, on 127.0.0.1 or a test host (netns.py), for BuildKit.

`git http-backend` behind a small handler that demands the token the way BuildKit
sends it (HTTP basic, user x-access-token), and counts who came with what.
"""
from __future__ import annotations

import base64
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

from netns import Namespace, listening_socket


def make_repository(root: Path, files: dict[str, str], branch: str = "main") -> Path:
    """A bare repository root/app.git with one commit of `files` on `branch`."""
    work = root / "work"
    work.mkdir(parents=True)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    return _commit_bare(work, root / "app.git", branch)


def snapshot_repository(root: Path, source: Path, branch: str = "main") -> Path:
    """A bare repository root/app.git with one commit of a git checkout's files as they are now, committed or
    not, symlinks kept (what .gitignore leaves out stays out)."""
    work = root / "work"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        origin, copy = source / name, work / name
        if origin.is_symlink() or origin.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_symlink():
                copy.symlink_to(os.readlink(origin))
            else:
                shutil.copy2(origin, copy)
    return _commit_bare(work, root / "app.git", branch)


def commit_change(root: Path, files: dict[str, str], branch: str = "main") -> None:
    """One more commit on `branch` of the repository make_repository made: `files` written (changed or added)."""
    work = root / "work"
    for name, text in files.items():
        (work / name).write_text(text)
    for args in (["add", "-A"], ["commit", "-q", "-m", "change"], ["push", "-q", str(root / "app.git"), branch]):
        subprocess.run(["git", *args], cwd=work, check=True, env=_git_env())


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "kiln", "GIT_AUTHOR_EMAIL": "kiln@example.com",
            "GIT_COMMITTER_NAME": "kiln", "GIT_COMMITTER_EMAIL": "kiln@example.com"}


def _commit_bare(work: Path, bare: Path, branch: str) -> Path:
    for args in (["init", "-q", "-b", branch], ["add", "-A"], ["commit", "-q", "-m", "app"]):
        subprocess.run(["git", *args], cwd=work, check=True, env=_git_env())
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


class GitServer(http.server.ThreadingHTTPServer):
    def __init__(self, project_root: Path, token: str, host: str = "127.0.0.1", namespace: Namespace | None = None):
        sock = listening_socket(host, 0, namespace)
        super().__init__(sock.getsockname(), _GitHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.project_root, self.token = project_root, token
        self.authorized = self.refused = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/app.git"


class _GitHandler(http.server.BaseHTTPRequestHandler):
    server: GitServer

    def _serve(self) -> None:
        expected = "Basic " + base64.b64encode(f"x-access-token:{self.server.token}".encode()).decode()
        if self.headers.get("Authorization", "").lower() != expected.lower():
            self.server.refused += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        self.server.authorized += 1
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"GIT_PROJECT_ROOT": str(self.server.project_root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
               "QUERY_STRING": query, "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "PATH": os.environ["PATH"]}
        out = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode().split("\r\n") if ":" in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "status":
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve  # noqa: N815 (http.server's naming)

    def log_message(self, *args) -> None:
        pass
