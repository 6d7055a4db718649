"""A loopback HTTP server that serves model repositories the way the Hugging Face hub does.

Enough of the hub protocol for ``huggingface_hub.snapshot_download``: the revision info and tree
endpoints (commit sha, file list) and ``resolve`` downloads with the commit and ETag headers. It records every
path requested so tests can prove which files were (and were not) fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                hub.requests.append(self.path)
                path = self.path.split("?")[0]
                for repo_id, folder in hub.repos.items():
                    info_prefix = f"/api/models/{repo_id}/revision/"
                    tree_prefix = f"/api/models/{repo_id}/tree/"
                    file_prefix = f"/{repo_id}/resolve/"
                    if path.startswith(info_prefix):
                        siblings = [{"rfilename": p.name} for p in sorted(folder.iterdir()) if p.is_file()]
                        payload = json.dumps({"id": repo_id, "sha": COMMIT, "siblings": siblings}).encode()
                        return self._reply(200, payload, "application/json", body)
                    if path.startswith(tree_prefix):
                        entries = [
                            {
                                "type": "file",
                                "path": p.name,
                                "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                            }
                            for p in sorted(folder.iterdir())
                            if p.is_file()
                        ]
                        return self._reply(200, json.dumps(entries).encode(), "application/json", body)
                    if path.startswith(file_prefix):
                        name = path[len(file_prefix) :].split("/", 1)[1]
                        file = folder / name
                        if file.is_file():
                            return self._reply(200, file.read_bytes(), "application/octet-stream", body)
                return self._reply(
                    404, b'{"error": "not found"}', "application/json", body, extra={"X-Error-Code": "RepoNotFound"}
                )

            def _reply(self, status, payload, content_type, body, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(payload).hexdigest() + '"')
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
