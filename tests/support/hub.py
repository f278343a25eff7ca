"""A small model hub on 127.0.0.1 that answers the endpoints huggingface_hub uses to download one file.

    GET  /api/models/<repo>[/revision/<rev>]      model info, with each file's LFS sha256 and size
    HEAD /<repo>/resolve/<rev>/<file>             the file's metadata (X-Repo-Commit, ETag = its sha256, size)
    GET  /<repo>/resolve/<rev>/<file>             the bytes; honours "Range: bytes=N-" (206), so a cut transfer resumes

``wrong_sha`` announces another checksum than the file's; ``cut_after`` closes the first transfer after
that many bytes (an interrupted download); every request is recorded (method, path, Range).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo: str, files: dict[str, Path], wrong_sha: bool = False, cut_after: int | None = None):
        self.repo, self.files = repo, {name: Path(p).read_bytes() for name, p in files.items()}
        self.wrong_sha, self.cut_after = wrong_sha, cut_after
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sha(self, name: str) -> str:
        real = hashlib.sha256(self.files[name]).hexdigest()
        return hashlib.sha256(b"not it").hexdigest() if self.wrong_sha else real

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, h: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes | None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, str(v))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        info = f"/api/models/{self.repo}"
        if path == info or path.startswith(info + "/revision/"):
            data = {"id": self.repo, "modelId": self.repo, "sha": COMMIT, "private": False, "siblings": [
                {"rfilename": n, "size": len(b), "blobId": hashlib.sha1(b).hexdigest(),
                 "lfs": {"sha256": self.sha(n), "size": len(b), "pointerSize": 134}} for n, b in self.files.items()]}
            raw = json.dumps(data).encode()
            return self._send(h, 200, {"Content-Type": "application/json", "Content-Length": len(raw)}, raw if body else None)
        prefix = f"/{self.repo}/resolve/"
        if not path.startswith(prefix):
            return self._send(h, 404, {"Content-Length": 0, "X-Error-Code": "RepoNotFound"}, None)
        _, _, name = path[len(prefix):].partition("/")
        if name not in self.files:
            return self._send(h, 404, {"Content-Length": 0, "X-Error-Code": "EntryNotFound"}, None)
        data = self.files[name]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self.sha(name)}"', "X-Linked-Etag": f'"{self.sha(name)}"',
                   "X-Linked-Size": len(data), "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        part = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = len(part)
        if not body:
            return self._send(h, 200, {**headers, "Content-Length": len(data)}, None)
        if self.cut_after is not None and start == 0:
            self.cut_after, cut = None, self.cut_after
            self._send(h, status, headers, part[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the line drops mid-transfer
            return
        self._send(h, status, headers, part)
