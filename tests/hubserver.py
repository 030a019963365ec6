"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

The real ``huggingface_hub`` client (and timm / transformers on top of it) talks to it over HTTP on 127.0.0.1,
with nothing patched: point ``HF_ENDPOINT`` at ``LocalHub.endpoint`` *before* ``huggingface_hub`` is imported
(see ``run_client``), and set ``HF_HUB_DISABLE_XET=1`` so that uploads use the LFS protocol served here.

Storage, under the folder given to ``LocalHub``::

    repos/{models,datasets,spaces}/<ns>/<name>/meta.json   refs, and every commit's full file manifest
    repos/.../blobs/<git-sha1>                             content of regular (non-LFS) files
    repos/.../lfs/<sha256>                                 content of LFS objects (uploaded with PUT)

Every commit gets a new 40-hex sha and keeps its own manifest, so old revisions resolve after later commits.
Only the branch ``main`` exists; pull requests (``create_pr=True``) are refused. ``fail_next`` makes chosen
requests fail, to test what a client does when the Hub breaks in the middle of an upload.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

URL_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # how the client prefixes non-API urls

# What the Hub puts in the .gitattributes of a new repo (abridged): these patterns are stored with LFS whatever
# their size, so model weights always exercise the LFS path.
GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.h5", "*.msgpack", "*.npy",
              "*.npz", "*.pkl", "*.pickle", "*.zip", "*.tar.gz", "*.gz", "*.parquet", "*.arrow")
)

API_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)"
                    r"(?:/(revision|tree|preupload|commit|paths-info)/([^/]+)(?:/(.*))?)?$")
RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
LFS_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)\.git/info/lfs/objects/(batch|verify)$")
UPLOAD_RE = re.compile(r"^/lfs-upload/(models|datasets|spaces)/([^/]+)/([^/]+)/([0-9a-f]{64})$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob; the client compares it with preupload's `oid` to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


class HubError(Exception):
    """An error answer; `code` goes to X-Error-Code, which the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class LocalHub:
    def __init__(self, root: str | os.PathLike, lfs_threshold: int = 1024 * 1024, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.lfs_threshold = lfs_threshold  # preupload answers "lfs" for files of at least this many bytes
        self.host = host
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request; never any header
        self._lock = threading.RLock()
        self._upload_sig = secrets.token_hex(16)  # plays the role of the signature in a presigned S3 url
        self._faults: list[list] = []  # [path regex, status, answers left], see fail_next
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "LocalHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{self.host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- fault injection ---------------------------------------------------------------------------------------
    def fail_next(self, path_regex: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests whose path matches `path_regex` with `status`, changing nothing."""
        with self._lock:
            self._faults.append([re.compile(path_regex), status, times])

    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault[2] > 0 and fault[0].search(path):
                    fault[2] -= 1
                    return fault[1]
        return None

    # ---- storage -----------------------------------------------------------------------------------------------
    def _dir(self, rtype: str, ns: str, name: str) -> Path:
        if not all(re.fullmatch(r"[\w.\-]+", s) and s not in (".", "..") for s in (ns, name)):
            raise HubError(400, f"Invalid repo id {ns}/{name}")
        return self.root / "repos" / f"{rtype}s" / ns / name

    def _base(self, meta: dict) -> Path:
        return self._dir(meta["type"], *meta["id"].split("/"))

    def _meta(self, rtype: str, ns: str, name: str, auth: bool = True) -> dict:
        path = self._dir(rtype, ns, name) / "meta.json"
        if not path.exists():
            raise HubError(404, f"Repository {ns}/{name} not found", "RepoNotFound")
        meta = json.loads(path.read_text())
        if meta["private"] and not auth:  # the Hub hides private repos from anonymous callers
            raise HubError(401, f"Repository {ns}/{name} not found", "RepoNotFound")
        return meta

    def _save(self, meta: dict) -> None:
        path = self._base(meta) / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)

    @staticmethod
    def _resolve(meta: dict, rev: str) -> str:
        if rev in meta["refs"]:
            return meta["refs"][rev]
        if rev in meta["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _add_commit(self, meta: dict, branch: str, files: dict, message: str) -> str:
        sha = hashlib.sha1(f"{meta['id']}{uuid.uuid4()}".encode()).hexdigest()
        meta["commits"][sha] = {"parent": meta["refs"].get(branch), "message": message,
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "files": files}
        meta["refs"][branch] = sha
        self._save(meta)
        return sha

    def _store_regular(self, meta: dict, data: bytes) -> dict:
        oid = git_blob_sha1(data)
        blob = self._base(meta) / "blobs" / oid
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        return {"size": len(data), "oid": oid, "lfs": None}

    def _content_path(self, meta: dict, entry: dict) -> Path:
        base = self._base(meta)
        return base / "lfs" / entry["lfs"]["oid"] if entry["lfs"] else base / "blobs" / entry["oid"]

    def create_repo(self, rtype: str, repo_id: str, private: bool = False, sdk: str | None = None) -> str:
        """Create a repo directly (also what POST /api/repos/create does). Returns its url."""
        with self._lock:
            ns, name = repo_id.split("/")
            url = f"{self.endpoint}/{PREFIX[rtype]}{repo_id}"
            repo_dir = self._dir(rtype, ns, name)
            if (repo_dir / "meta.json").exists():
                raise HubError(409, "You already created this repo", None)
            repo_dir.mkdir(parents=True)
            meta = {"type": rtype, "id": repo_id, "private": private, "sdk": sdk, "refs": {}, "commits": {},
                    "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            # Like the Hub, a new repo starts with one commit holding .gitattributes.
            entry = self._store_regular(meta, GITATTRIBUTES.encode())
            self._add_commit(meta, "main", {".gitattributes": entry}, "initial commit")
            return url

    # ---- views -------------------------------------------------------------------------------------------------
    def _tree_entries(self, files: dict, prefix: str, recursive: bool) -> list[dict]:
        """Entries in the shape of GET /api/.../tree: {type, oid, size, path[, lfs]}."""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self._file_entry(path, files[path]))
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(dirs)]
        return out

    @staticmethod
    def _file_entry(path: str, e: dict) -> dict:
        out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = e["lfs"]  # {oid: sha256, size, pointerSize}
        return out

    def _repo_info(self, meta: dict, sha: str, blobs: bool) -> dict:
        files = meta["commits"][sha]["files"]
        siblings = []
        for path in sorted(files):
            s = {"rfilename": path}
            if blobs:  # files_metadata=True; note siblings spell the LFS hash "sha256", tree entries "oid"
                e = files[path]
                s.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["lfs"]["size"],
                                "pointerSize": e["lfs"]["pointerSize"]}
            siblings.append(s)
        ns = meta["id"].split("/")[0]
        info = {"_id": hashlib.md5(meta["id"].encode()).hexdigest()[:24], "id": meta["id"], "author": ns,
                "sha": sha, "private": meta["private"], "disabled": False, "gated": False, "tags": [],
                "lastModified": meta["commits"][sha]["date"], "createdAt": meta["createdAt"],
                "siblings": siblings}
        if meta["type"] == "space":
            info.update(sdk=meta["sdk"], runtime={"stage": "NO_APP_FILE", "hardware": None})
        return info


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length, every body is read

    def log_message(self, *args) -> None:  # quiet; and never log headers (they carry the token)
        pass

    # ---- plumbing ----------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # httpx streams file uploads
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, ctype: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), ctype=ctype)

    def _auth(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _require_auth(self) -> None:
        if not self._auth():
            raise HubError(401, "Invalid username or password.")

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, url.path))
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            if (status := self.hub._take_fault(url.path)) is not None:
                raise HubError(status, f"LocalHub: injected failure of {self.command} {url.path}")
            with self.hub._lock:
                self._route(url.path, parse_qs(url.query), body)
        except Exception as e:  # noqa: BLE001 - any failure becomes an HTTP answer, not a dropped connection
            if not isinstance(e, HubError):
                e = HubError(500, f"LocalHub internal error: {type(e).__name__}: {e}")
            safe = e.message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
            headers = {"X-Error-Message": safe}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._send(e.status, json.dumps({"error": e.message}).encode(), headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ---- routes ------------------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict, body: bytes) -> None:
        hub, m = self.hub, None
        if path == "/api/repos/create" and self.command == "POST":
            self._require_auth()
            p = json.loads(body)
            rtype = p.get("type") or "model"
            repo_id = f"{p.get('organization') or 'user'}/{p['name']}"
            url = f"{hub.endpoint}/{PREFIX[rtype]}{repo_id}"
            try:
                url = hub.create_repo(rtype, repo_id, private=p.get("private") or p.get("visibility") == "private",
                                      sdk=p.get("sdk"))
            except HubError as e:  # create_repo(exist_ok=True) reads `url` from the 409 body
                if e.status != 409:
                    raise
                return self._json({"error": e.message, "url": url}, 409)
            return self._json({"url": url, "name": repo_id})
        if path == "/api/validate-yaml" and self.command == "POST":
            self._require_auth()
            # Stand-in for the Hub's YAML check (no YAML parser in the standard library): the metadata block,
            # when there is one, must be closed. Errors answer 400 with {"errors": [{"message"}]}.
            content = json.loads(body)["content"].replace("\r\n", "\n")
            if content.startswith("---\n") and "\n---" not in content[3:]:
                return self._json({"errors": [{"message": "unclosed YAML metadata block"}], "warnings": []}, 400)
            return self._json({"errors": [], "warnings": []})
        if m := API_RE.match(path):
            return self._api(URL_TYPES[m[1]], m[2], m[3], m[4], unquote(m[5] or "main"), unquote(m[6] or ""),
                             query, body)
        if m := RESOLVE_RE.match(path):
            if self.command not in ("GET", "HEAD"):
                raise HubError(405, "Method not allowed")
            rtype = URL_TYPES[m[1]] if m[1] else "model"
            return self._resolve_file(rtype, m[2], m[3], unquote(m[4]), unquote(m[5]))
        if (m := LFS_RE.match(path)) and self.command == "POST":
            return self._lfs(URL_TYPES[m[1]] if m[1] else "model", m[2], m[3], m[4], body)
        if (m := UPLOAD_RE.match(path)) and self.command == "PUT":
            return self._lfs_put(URL_TYPES[m[1]], m[2], m[3], m[4], query, body)
        raise HubError(404, f"Not found: {self.command} {path}")

    def _api(self, rtype, ns, name, action, rev, subpath, query, body) -> None:
        hub = self.hub
        meta = hub._meta(rtype, ns, name, auth=self._auth())
        if action in (None, "revision", "tree", "paths-info") and self.command in ("GET", "POST"):
            sha = hub._resolve(meta, rev)
            files = meta["commits"][sha]["files"]
            if action in (None, "revision"):
                blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
                return self._json(hub._repo_info(meta, sha, blobs))
            if action == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                prefix = subpath.strip("/") + "/" if subpath.strip("/") else ""
                entries = hub._tree_entries(files, prefix, recursive)
                if prefix and not entries:
                    raise HubError(404, f"{subpath} does not exist on {rev}", "EntryNotFound", sha)
                return self._json(entries)  # one page: no `Link: rel="next"` header
            # paths-info: form-encoded `paths=a&paths=b&expand=...`
            wanted = parse_qs(body.decode()).get("paths", [])
            dirs = {e["path"]: e for e in hub._tree_entries(files, "", True) if e["type"] == "directory"}
            return self._json([hub._file_entry(p, files[p]) if p in files else dirs[p]
                               for p in wanted if p in files or p in dirs])
        if self.command != "POST" or action not in ("preupload", "commit"):
            raise HubError(405, "Method not allowed")
        self._require_auth()
        if query.get("create_pr"):
            raise HubError(400, "LocalHub does not support pull requests")
        if rev not in meta["refs"]:  # commits go to a branch; a commit sha is not a branch
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = meta["commits"][meta["refs"][rev]]["files"]
        if action == "preupload":
            return self._json({"files": [self._upload_mode(meta, files, f) for f in json.loads(body)["files"]]})
        return self._commit(meta, rev, files, body)

    def _upload_mode(self, meta: dict, files: dict, f: dict) -> dict:
        """preupload: "lfs" for big files, for binary samples and for .gitattributes LFS patterns."""
        attrs = files.get(".gitattributes")
        patterns = []
        if attrs and not attrs["lfs"]:
            text = self.hub._content_path(meta, attrs).read_text(errors="replace")
            patterns = [ln.split()[0] for ln in text.splitlines() if "filter=lfs" in ln]
        base = f["path"].rsplit("/", 1)[-1]
        lfs = f["size"] > 0 and (f["size"] >= self.hub.lfs_threshold
                                 or b"\0" in base64.b64decode(f["sample"])
                                 or any(fnmatch.fnmatch(base, p) or fnmatch.fnmatch(f["path"], p) for p in patterns))
        # `oid` is the current remote oid (git sha1, or sha256 for LFS): the client skips files that match.
        cur = files.get(f["path"])
        oid = (cur["lfs"]["oid"] if cur["lfs"] else cur["oid"]) if cur else None
        return {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

    def _commit(self, meta: dict, branch: str, files: dict, body: bytes) -> None:
        """NDJSON: a `header` line {summary, description, parentCommit?}, then file / lfsFile / deleted* lines."""
        hub, files = self.hub, dict(files)
        lines = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "First NDJSON line must be the header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not meta["refs"][branch].startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        for op in lines[1:]:
            key, v = op["key"], op["value"]
            if key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                files[v["path"]] = hub._store_regular(meta, data)
            elif key == "lfsFile":
                obj = hub._base(meta) / "lfs" / v["oid"]
                if not obj.exists():  # the object must have been PUT (or already be in this repo)
                    raise HubError(422, f"LFS object {v['oid']} for {v['path']} was not uploaded")
                size = obj.stat().st_size
                pointer = lfs_pointer(v["oid"], size)
                files[v["path"]] = {"size": size, "oid": git_blob_sha1(pointer),
                                    "lfs": {"oid": v["oid"], "size": size, "pointerSize": len(pointer)}}
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {v['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        sha = hub._add_commit(meta, branch, files, header.get("summary", ""))
        url = f"{hub.endpoint}/{PREFIX[meta['type']]}{meta['id']}/commit/{sha}"
        self._json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def _resolve_file(self, rtype, ns, name, rev, filename) -> None:
        hub = self.hub
        meta = hub._meta(rtype, ns, name, auth=self._auth())
        sha = hub._resolve(meta, rev)
        entry = meta["commits"][sha]["files"].get(filename)
        if entry is None:  # X-Repo-Commit lets the client cache the absence (.no_exist/<sha>/<file>)
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound", sha)
        # For LFS files the Hub answers a redirect to its CDN with X-Linked-Etag (sha256) and X-Linked-Size, which
        # the client prefers over ETag / Content-Length. We serve the bytes directly but keep both headers.
        etag = entry["lfs"]["oid"] if entry["lfs"] else entry["oid"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        data = hub._content_path(meta, entry).read_bytes()
        status, rng = 200, re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:  # resumed downloads send `Range: bytes=N-`
            start, end = int(rng[1]), int(rng[2]) if rng[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, ctype="application/octet-stream")

    def _lfs(self, rtype, ns, name, op, body) -> None:
        """git-lfs batch API (basic transfer). Objects already stored get no `actions`: the client skips them."""
        hub = self.hub
        self._require_auth()
        meta = hub._meta(rtype, ns, name)
        p = json.loads(body)
        lfs_dir = hub._dir(rtype, ns, name) / "lfs"
        if op == "verify":
            obj = lfs_dir / p["oid"]
            if not obj.exists() or obj.stat().st_size != p["size"]:
                raise HubError(404, f"LFS object {p['oid']} not found")
            return self._json({"success": True}, ctype="application/vnd.git-lfs+json")
        if p.get("operation") != "upload":
            raise HubError(400, "LocalHub's LFS batch only supports uploads")
        objects = []
        for o in p["objects"]:
            item = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if not (lfs_dir / o["oid"]).exists():
                base = f"{hub.endpoint}/lfs-upload/{rtype}s/{meta['id']}/{o['oid']}"
                verify = f"{hub.endpoint}/{PREFIX[rtype]}{meta['id']}.git/info/lfs/objects/verify"
                item["actions"] = {"upload": {"href": f"{base}?sig={hub._upload_sig}"}, "verify": {"href": verify}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, rtype, ns, name, oid, query, body) -> None:
        """The upload href: like a presigned S3 url it needs no Authorization header, only its signature."""
        hub = self.hub
        if query.get("sig", [""])[0] != hub._upload_sig:
            raise HubError(403, "Bad upload signature")
        hub._meta(rtype, ns, name)
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        obj = hub._dir(rtype, ns, name) / "lfs" / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_name(f"{oid}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(body)
        tmp.replace(obj)
        self._send(200, b"", {"ETag": f'"{oid}"'})


# ---- client side ---------------------------------------------------------------------------------------------
# Variables that would send the client's cache or token elsewhere than `hf_home`, or switch it offline.
_DROP_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH",
             "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
             "HF_DATASETS_CACHE", "TORCH_HOME", "XDG_CACHE_HOME")


def client_env(endpoint: str, hf_home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=str(hf_home),
               HF_TOKEN="dummy-token", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_client(script: str, endpoint: str, hf_home: Path, *, extra_env: dict | None = None,
               cwd: str | os.PathLike | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter whose huggingface_hub talks to `endpoint`, with its cache in `hf_home`.

    The Hub variables are read when huggingface_hub is imported, hence the subprocess. The working directory
    defaults to the repository root, so the script can import the project. Raises with stderr on failure.
    """
    cwd = cwd if cwd is not None else Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], env=client_env(endpoint, Path(hf_home), extra_env),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"client script failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout[-4000:]}"
                           f"\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


def last_json(proc: subprocess.CompletedProcess):
    """The JSON document printed on the last non-empty stdout line (libraries may print before it)."""
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.strip()][-1])
