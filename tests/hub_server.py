"""A Hugging Face Hub on 127.0.0.1 for the tests: the few endpoints huggingface_hub calls to create a repository
and a branch, commit files (every file "regular": inline base64 in the commit's ndjson), and download a snapshot
(revision info, the file tree, HEAD/GET of resolve/). Shapes as huggingface_hub's own code reads them (hf_api.py,
_commit_api.py, file_download.py). Nothing is checked beyond what the tests need; every request is recorded.

    with HubServer(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test"}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<what>revision|tree|preupload|commit|branch)/(?P<rev>[^/]+)"
                  r"(?P<path>/.*)?$")  # fmt: skip
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class Repo:
    private: bool
    branches: dict[str, str]  # branch → commit id
    commits: dict[str, dict[str, bytes]]  # commit id → the files at that commit
    messages: list[str] = field(default_factory=list)

    def commit_of(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        r = self.repos[repo]
        return r.commits[r.commit_of(revision)]

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], message: str) -> str:
        tree = {**(repo.commits[parent] if parent else {}), **files}
        oid = hashlib.sha1(json.dumps([parent, message, sorted(tree)]).encode() + b"".join(tree.values())).hexdigest()
        repo.commits[oid] = tree
        repo.messages.append(message)
        return oid


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, head: bool = False, **headers) -> None:
            self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code, **headers}, head=head)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404, "RepoNotFound", head=head)
                return None
            return repo

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(("POST", path))
            body = self._body()
            if not self._authorized():
                return self._send(401, b'{"error": "Invalid credentials"}')
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                if repo_id in hub.repos:
                    return self._json(409, {"error": "You already created this model repo"})
                repo = Repo(private=payload.get("visibility") == "private", branches={}, commits={})
                repo.branches["main"] = hub._new_commit(repo, None, {".gitattributes": b"*.safetensors lfs\n"},
                                                        "initial commit")  # fmt: skip
                hub.repos[repo_id] = repo
                return self._json(200, {"url": f"{hub.url}/{repo_id}"})
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            match = _API.match(path)
            if match is None:
                return self._send(404)
            repo = self._repo(match["repo"])
            if repo is None:
                return None
            revision = unquote(match["rev"])
            if match["what"] == "branch":
                if revision in repo.branches:
                    return self._json(409, {"error": "Branch already exists"})
                repo.branches[revision] = repo.branches["main"]
                return self._json(200, {})
            if match["what"] == "preupload":
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                return self._json(200, {"files": modes, "commitOid": repo.commit_of(revision)})
            if match["what"] == "commit":
                if revision not in repo.branches:
                    return self._error(404, "RevisionNotFound")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(item["value"] for item in lines if item["key"] == "header")
                files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                         for item in lines if item["key"] == "file"}  # fmt: skip
                oid = hub._new_commit(repo, repo.branches[revision], files, header["summary"])
                repo.branches[revision] = oid
                return self._json(200, {"commitUrl": f"{hub.url}/{match['repo']}/commit/{oid}", "commitOid": oid})
            return self._send(404)

        def do_GET(self, head: bool = False) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(("HEAD" if head else "GET", path))
            api, resolve = _API.match(path), _RESOLVE.match(path)
            match = api or resolve
            if match is None:
                return self._send(404, head=head)
            repo = self._repo(match["repo"], head=head)
            if repo is None:
                return None
            commit = repo.commit_of(match["rev"])
            if commit is None:
                return self._error(404, "RevisionNotFound", head=head)
            files = repo.commits[commit]
            if resolve is not None:
                name = resolve["path"]
                if name not in files:
                    return self._error(404, "EntryNotFound", head=head, **{"X-Repo-Commit": commit})
                headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(files[name])}"'}
                return self._send(200, files[name], headers, head=head)
            if api["what"] == "revision":
                return self._json(200, {"id": match["repo"], "sha": commit, "private": repo.private,
                                        "siblings": [{"rfilename": name} for name in sorted(files)]})  # fmt: skip
            if api["what"] == "tree":
                prefix = (api["path"] or "/").lstrip("/")
                entries = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                           for name, data in sorted(files.items()) if name.startswith(prefix)]  # fmt: skip
                return self._json(200, entries)
            return self._send(404)

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

    return Handler
