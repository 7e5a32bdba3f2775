"""A local HTTP stand-in of the Kubernetes API, for testing the Kubernetes target here.

No cluster can exist on these machines, so the release engine's Kubernetes side is exercised
against this server with the real ``kubernetes`` client. It keeps objects in memory and behaves
like an API server where our client can tell: resourceVersions and 409 conflicts, 404/409/422
``Status`` answers, strategic-merge / merge / JSON patches, label selectors, and - what makes it
worth having - it validates every object it stores against the official OpenAPI schemas
(``kubernetes-validate``, strict), so an invalid patch is refused just as a cluster would.

It simulates the controllers the engine waits on: a Deployment's status converges over a few
reads (observedGeneration, updated/ready/available replicas) and its Pods come and go with it;
a Job completes (or fails) after a few reads. Hooks let a test make a rollout get stuck, a Job
fail, a pod answer its health check badly, and the Prometheus service proxy reach a real
Prometheus.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from components import schemas
from rollout.local.processes import free_port

# resource plural -> (api prefix, kind, apiVersion)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "configmaps": ("/api/v1", "ConfigMap", "v1"),
    "secrets": ("/api/v1", "Secret", "v1"),
    "services": ("/api/v1", "Service", "v1"),
    "pods": ("/api/v1", "Pod", "v1"),
    "events": ("/api/v1", "Event", "v1"),
    "deployments": ("/apis/apps/v1", "Deployment", "apps/v1"),
    "jobs": ("/apis/batch/v1", "Job", "batch/v1"),
    "ingresses": ("/apis/networking.k8s.io/v1", "Ingress", "networking.k8s.io/v1"),
}
KIND_TO_PLURAL = {kind: plural for plural, (_, kind, _) in RESOURCES.items()}

Health = Callable[[str, str], tuple[int, dict[str, Any]]]
"""(pod name, path) -> (HTTP status, JSON body) of a pod's answer through the pod proxy."""


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic merge as far as our client uses it: dicts merge, ``None`` deletes, lists of
    named items (containers, env, ports, volumes) merge by ``name``, other lists replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(base.get(key), value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and patch
        and all(isinstance(x, dict) and "name" in x for x in patch + base)
    ):
        merged = {x["name"]: x for x in base}
        order = [x["name"] for x in base]
        for item in patch:
            name = item["name"]
            if name in merged:
                merged[name] = strategic_merge(merged[name], item)
            else:
                merged[name] = item
                order.append(name)
        return [merged[n] for n in order]
    return copy.deepcopy(patch)


def merge_patch(base: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove (what a client sends to change one annotation)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                parent.pop(last, None)
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch op {op['op']!r}")
    return doc


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif labels.get(term) is None:
            return False
    return True


class KubeStandin:
    """Start with ``start()``; point ``kubernetes.client.Configuration(host=url)`` at ``url``."""

    def __init__(
        self,
        kubernetes_version: str = schemas.KUBERNETES_VERSION,
        rollout_reads: int = 2,
        job_reads: int = 2,
    ) -> None:
        self.kubernetes_version = kubernetes_version
        self.rollout_reads = rollout_reads
        self.job_reads = job_reads
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.version = 100
        self.stuck: set[str] = set()
        """Deployments whose pods never become ready."""
        self.failing_jobs: set[str] = set()
        self.job_logs: dict[str, str] = {}
        """Job name -> what its pod printed (``read_namespaced_pod_log``)."""
        self.health: Health = lambda pod, path: (200, {"status": "healthy"})
        self.service_proxies: dict[str, str] = {}
        """Service name -> base URL the service proxy forwards to (e.g. a real Prometheus)."""
        self.writes: list[tuple[str, str, str]] = []
        """(verb, kind, name) of every accepted write, in order."""
        self._reads: dict[tuple[str, str, str], int] = {}
        self.port = free_port()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------------- lifecycle

    def start(self) -> KubeStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not raw:
                    return None
                if "json" not in (self.headers.get("Content-Type") or "json"):
                    return raw  # proxied bodies (a Pushgateway push) pass through as bytes
                return json.loads(raw)

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, verb: str) -> None:
                try:
                    body = self._body() if verb in ("POST", "PUT", "PATCH") else None
                    code, out, ctype = standin.handle(
                        verb, self.path, body, self.headers.get("Content-Type", "")
                    )
                    self._send(code, out, ctype)
                except ApiError as exc:
                    self._send(exc.code, exc.status())
                except (ValueError, KeyError) as exc:
                    self._send(400, ApiError(400, "BadRequest", str(exc)).status())

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ----------------------------------------------------------------------- objects

    def validate(self, obj: dict[str, Any]) -> None:
        try:
            schemas.validate(obj, self.kubernetes_version)
        except schemas.InvalidManifest as exc:
            raise ApiError(422, "Invalid", f"invalid object: {exc}") from None

    def _store(
        self, plural: str, ns: str, obj: dict[str, Any], verb: str, old: dict[str, Any] | None
    ) -> dict[str, Any]:
        _, kind, api_version = RESOURCES[plural]
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = kind, api_version
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        self.validate({k: v for k, v in obj.items() if k != "status"})
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            changed = old.get("spec") != obj.get("spec")
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if changed else 0)
            if "status" not in obj and "status" in old:
                obj["status"] = old["status"]
        self.objects[(plural, ns, meta["name"])] = obj
        self.writes.append((verb, kind, meta["name"]))
        if plural == "deployments":
            self._reads[(plural, ns, meta["name"])] = 0
        return obj

    def seed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as if ``pulumi up`` had created it (validated like any write)."""
        with self.lock:
            plural = KIND_TO_PLURAL[obj["kind"]]
            ns = obj["metadata"].get("namespace", "default")
            stored = self._store(plural, ns, obj, "seed", None)
            if plural == "deployments":
                self._converge(stored, force=True)
            return stored

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((KIND_TO_PLURAL[kind], ns, name)))

    # ----------------------------------------------------------------------- controllers

    def _converge(self, dep: dict[str, Any], force: bool = False) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        key = ("deployments", ns, name)
        reads = self._reads.get(key, 0) + 1
        self._reads[key] = reads
        want = int(dep["spec"].get("replicas", 1))
        gen = dep["metadata"]["generation"]
        status = dep.setdefault("status", {})
        if name in self.stuck:
            status.update(
                observedGeneration=gen,
                replicas=want,
                updatedReplicas=want,
                readyReplicas=0,
                availableReplicas=0,
                unavailableReplicas=want,
            )
            self._sync_pods(dep, 0)
            return
        if not force and reads < self.rollout_reads:
            status["observedGeneration"] = gen
            status["updatedReplicas"] = 0
            return
        status.update(
            observedGeneration=gen,
            replicas=want,
            updatedReplicas=want,
            readyReplicas=want,
            availableReplicas=want,
        )
        status.pop("unavailableReplicas", None)
        if want == 0:
            for k in ("readyReplicas", "availableReplicas", "updatedReplicas"):
                status.pop(k, None)
        self._sync_pods(dep, want)

    def _sync_pods(self, dep: dict[str, Any], ready: int) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        template = dep["spec"]["template"]
        want = int(dep["spec"].get("replicas", 1))
        for key in [k for k in self.objects if k[0] == "pods" and k[1] == ns]:
            pod = self.objects[key]
            if pod["metadata"].get("annotations", {}).get("portal.dev/owner") == name:
                del self.objects[key]
        suffix = f"{dep['metadata']['generation']:x}"
        for i in range(want):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{suffix}-{i}",
                    "namespace": ns,
                    "labels": dict(template["metadata"].get("labels", {})),
                    "annotations": {"portal.dev/owner": name},
                },
                "spec": copy.deepcopy(template["spec"]),
            }
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            ok = "True" if i < ready else "False"
            pod["status"] = {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": ok}],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "ready": ok == "True",
                        "restartCount": 0,
                        "image": c["image"],
                        "imageID": "",
                        "started": True,
                    }
                    for c in template["spec"]["containers"]
                ],
            }
            self.objects[("pods", ns, pod["metadata"]["name"])] = pod

    def _advance_job(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        key = ("jobs", ns, name)
        reads = self._reads.get(key, 0) + 1
        self._reads[key] = reads
        status = job.setdefault("status", {})
        if status.get("succeeded") or status.get("failed"):
            return
        status["active"] = 1
        if reads < self.job_reads:
            return
        status.pop("active", None)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod_name = f"{name}-run"
        self.objects[("pods", ns, pod_name)] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "labels": {"job-name": name},
                "resourceVersion": str(self.version),
            },
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": "Failed" if name in self.failing_jobs else "Succeeded"},
        }
        if name in self.failing_jobs:
            status["failed"] = int(job["spec"].get("backoffLimit", 0)) + 1
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                    "lastTransitionTime": now,
                    "lastProbeTime": now,
                }
            ]
        else:
            status["succeeded"] = 1
            status["conditions"] = [
                {
                    "type": "Complete",
                    "status": "True",
                    "lastTransitionTime": now,
                    "lastProbeTime": now,
                }
            ]

    # ----------------------------------------------------------------------- HTTP

    def handle(
        self, verb: str, raw_path: str, body: Any, content_type: str
    ) -> tuple[int, Any, str]:
        parsed = urllib.parse.urlsplit(raw_path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        path = parsed.path
        for prefix in sorted({p for p, _, _ in RESOURCES.values()}, key=len, reverse=True):
            if path.startswith(prefix + "/namespaces/"):
                rest = path[len(prefix) + len("/namespaces/") :].split("/")
                break
        else:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        ns, plural = rest[0], rest[1] if len(rest) > 1 else ""
        name = urllib.parse.unquote(rest[2]) if len(rest) > 2 else None
        sub = rest[3:] if len(rest) > 3 else []
        if plural not in RESOURCES or RESOURCES[plural][0] != prefix:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        with self.lock:
            if sub and sub[0] == "proxy":
                return self._proxy(plural, ns, name or "", "/".join(sub[1:]), query, verb, body)
            if sub and sub[0] == "log" and plural == "pods":
                pod = self._require(plural, ns, name or "")
                job = pod["metadata"].get("labels", {}).get("job-name", "")
                return 200, self.job_logs.get(job, "").encode(), "text/plain"
            if name is None:
                if verb == "GET":
                    return (
                        200,
                        self._list(plural, ns, query.get("labelSelector", "")),
                        "application/json",
                    )
                if verb == "POST":
                    return self._create(plural, ns, body)
                raise ApiError(405, "MethodNotAllowed", f"{verb} on a collection")
            if sub and sub[0] == "scale":
                return self._scale(ns, name, verb, body)
            if verb == "GET":
                return 200, self._read(plural, ns, name), "application/json"
            if verb == "PUT":
                return self._replace(plural, ns, name, body)
            if verb == "PATCH":
                return self._patch(plural, ns, name, body, content_type)
            if verb == "DELETE":
                self._require(plural, ns, name)
                del self.objects[(plural, ns, name)]
                return (
                    200,
                    {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}},
                    "application/json",
                )
        raise ApiError(405, "MethodNotAllowed", verb)

    def _require(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return obj

    def _read(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        obj = self._require(plural, ns, name)
        if plural == "deployments":
            self._converge(obj)
        elif plural == "jobs":
            self._advance_job(obj)
        return copy.deepcopy(obj)

    def _list(self, plural: str, ns: str, selector: str) -> dict[str, Any]:
        _, kind, api_version = RESOURCES[plural]
        items = [
            copy.deepcopy(o)
            for (p, n, _), o in sorted(self.objects.items())
            if p == plural and n == ns and matches(o["metadata"].get("labels", {}), selector)
        ]
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }

    def _create(self, plural: str, ns: str, body: dict[str, Any]) -> tuple[int, Any, str]:
        name = body.get("metadata", {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if (plural, ns, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
        return 201, self._store(plural, ns, body, "create", None), "application/json"

    def _replace(
        self, plural: str, ns: str, name: str, body: dict[str, Any]
    ) -> tuple[int, Any, str]:
        old = self._require(plural, ns, name)
        sent = body.get("metadata", {}).get("resourceVersion")
        if sent and sent != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}":'
                " the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        return 200, self._store(plural, ns, body, "replace", old), "application/json"

    def _patch(
        self, plural: str, ns: str, name: str, body: Any, content_type: str
    ) -> tuple[int, Any, str]:
        old = self._require(plural, ns, name)
        base = copy.deepcopy(old)
        if "json-patch" in content_type:
            new = json_patch(base, body)
        elif "merge-patch" in content_type and "strategic" not in content_type:
            new = merge_patch(base, body)
        else:
            new = strategic_merge(base, body)
        sent = (
            (body or {}).get("metadata", {}).get("resourceVersion")
            if isinstance(body, dict)
            else None
        )
        if sent and sent != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'{plural} "{name}" has been modified')
        new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        return 200, self._store(plural, ns, new, "patch", old), "application/json"

    def _scale(self, ns: str, name: str, verb: str, body: Any) -> tuple[int, Any, str]:
        dep = self._require("deployments", ns, name)
        if verb in ("PATCH", "PUT"):
            replicas = int(body["spec"]["replicas"])
            new = copy.deepcopy(dep)
            new["spec"]["replicas"] = replicas
            dep = self._store("deployments", ns, new, "scale", dep)
        return (
            200,
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "resourceVersion": dep["metadata"]["resourceVersion"],
                },
                "spec": {"replicas": dep["spec"].get("replicas", 1)},
                "status": {"replicas": dep.get("status", {}).get("replicas", 0)},
            },
            "application/json",
        )

    def _proxy(
        self,
        plural: str,
        ns: str,
        target: str,
        path: str,
        query: dict[str, str],
        verb: str = "GET",
        body: Any = None,
    ) -> tuple[int, Any, str]:
        name = target.split(":", 1)[0]
        if plural == "pods":
            self._require("pods", ns, name)
            code, answer = self.health(name, "/" + path)
            return code, answer, "application/json"
        if plural == "services":
            base = self.service_proxies.get(name)
            if base is None:
                raise ApiError(503, "ServiceUnavailable", f"no endpoints for service {name}")
            url = f"{base.rstrip('/')}/{path}"
            if query:
                url += "?" + urllib.parse.urlencode(query)
            data = (
                body
                if isinstance(body, bytes)
                else (None if body is None else json.dumps(body).encode())
            )
            req = urllib.request.Request(url, data=data, method=verb)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return (
                        resp.status,
                        resp.read(),
                        resp.headers.get("Content-Type", "application/json"),
                    )
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read(), "application/json"
            except (urllib.error.URLError, OSError) as exc:
                raise ApiError(
                    503, "ServiceUnavailable", f"error trying to reach service: {exc}"
                ) from exc
        raise ApiError(404, "NotFound", f"no proxy for {plural}")
