"""The data plane: real processes behind the pods of the namespaces a test enables.

``DataPlane`` is the node agent of the one kwok node for the pods it is given:

1. A MutatingAdmissionPolicy (real admission, no webhook) annotates ``portal.test/runtime:
   process`` on every pod created in an enabled namespace (``enable(name)``: a list in the
   policy, so nothing is written to the namespace, which need not exist yet) whose images all
   have a program here (``images.py``). kwok's stages for that annotation
   (``scripts/cluster/stages/``) then take such a pod to Running with an IP from the node's pod
   CIDR but leave it not ready, and leave a Job's pod running.
2. A watch on pods finds them; for each, a network namespace at its IP (``network.py``) and its
   containers as processes (``runtime.py``), one thread per pod probing them and writing the pod's
   status as a kubelet does (ready when the readiness probe answers; Succeeded or Failed with the
   exit codes when every container of a Job's pod ended). A kwok ``Logs`` object per pod, owned by
   the pod, points kwok at the CRI log files, so ``pods/log`` reads what the processes printed.
3. A deleted pod's processes are stopped (SIGTERM, then SIGKILL) and its namespace removed.
4. Each pod's /etc/hosts is kept current with the names cluster DNS would answer: every Service
   of its namespace -> a ready endpoint's IP, and ``kubernetes.default.svc`` -> the relay to the
   API server.

Use it as a context manager (``DataPlane(...).running()``) or through the ``data_plane`` session
fixture; leaving it stops every process, deletes every namespace and route, and removes the
admission policy, even after a failure. A run that was SIGKILLed leaves namespaces behind that
the next start on the same pod CIDR removes (with the processes in them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.dataplane.images import REPO, Images
from tests.dataplane.network import PodLink, PodNetwork
from tests.dataplane.runtime import (
    ContainerProcess,
    Volumes,
    container_env,
    decode_secret,
    hosts_file,
    now,
    volume_owner,
    write_in_place,
)

ANNOTATION = "portal.test/runtime"
REVISION = "portal.test/runtime-revision"
HOME_NAMESPACE = "portal-test-data-plane"
POLICY = "portal-test-process-runtime"
HOSTS_REFRESH_S = 1.0
log = logging.getLogger("dataplane")


class DataPlaneError(RuntimeError):
    pass


def _policy(images: Images, namespaces: list[str], revision: int) -> list[dict[str, Any]]:
    """The policy and its binding. The enabled namespaces are a literal of the policy (not a
    binding's namespace selector, so a namespace need not exist yet and nothing is written to
    it), and so is a revision it writes on each pod: a dry-run pod in the home namespace that
    carries the latest revision proves the API server's admission runs the latest policy."""
    repos = json.dumps(images.repositories)
    known = (
        f"{repos}.exists(r, c.image == r || c.image.startsWith(r + ':') "
        "|| c.image.startsWith(r + '@'))"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "matchConditions": [
                    {
                        "name": "in-an-enabled-namespace",
                        "expression": f"request.namespace in {json.dumps(namespaces)}",
                    },
                    {
                        "name": "every-image-has-a-program-here",
                        "expression": f"object.spec.containers.all(c, {known}) && "
                        f"(!has(object.spec.initContainers) || "
                        f"object.spec.initContainers.all(c, {known}))",
                    },
                ],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": [
                    {
                        "patchType": "ApplyConfiguration",
                        "applyConfiguration": {
                            "expression": "Object{metadata: Object.metadata{annotations: "
                            f'{{"{ANNOTATION}": "process", "{REVISION}": "{revision}"}}}}}}'
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY},
        },
    ]


class Reported(NamedTuple):
    """What a pod's runtime last wrote to the API server: its container statuses (as JSON), its
    Ready condition ("True" or "False") and its phase."""

    statuses: str
    ready: str
    phase: str | None


class PodRuntime:
    """One pod: its namespace, volumes and containers, and a thread that keeps its status."""

    def __init__(self, plane: DataPlane, pod: dict[str, Any]) -> None:
        self.plane = plane
        self.pod = pod
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.uid = meta["uid"]
        self.ip = pod["status"]["podIP"]
        self.directory = plane.workdir / "pods" / f"{meta['namespace']}_{meta['name']}"
        self.link: PodLink | None = None
        self.containers: list[ContainerProcess] = []
        self.init_containers: list[ContainerProcess] = []
        """Run one after the other to completion before ``containers`` start, as the kubelet
        does; one that fails fails a pod that is not restarted."""
        self.init_failed = False
        self.stopping = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"pod {self.key}")
        self._reported: Reported | None = None
        self.finished = False

    # -- start ---------------------------------------------------------------------------------

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        try:
            if kind == "secret":
                return decode_secret(self.plane.core.read_namespaced_secret(name, namespace).data)
            return dict(self.plane.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404:
                raise KeyError(name) from None
            raise

    def _token(self, account: str, seconds: int) -> str:
        meta = self.pod["metadata"]
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": max(600, seconds),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        answer = self.plane.core.create_namespaced_service_account_token(
            account, meta["namespace"], request
        )
        return str(answer.status.token)

    def start(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self.directory.chmod(0o755)
        self.plane.write_dns(self)
        self.link = self.plane.network.add_pod(self.uid, self.ip)
        specs = self.pod["spec"]["containers"]
        init_specs = self.pod["spec"].get("initContainers") or []
        images = []
        for spec in [*specs, *init_specs]:
            image = self.plane.images.get(spec["image"])
            if image is None:
                raise DataPlaneError(f"no program here for image {spec['image']}")
            images.append(image)
        volumes = Volumes.materialize(
            self.pod,
            self.directory,
            self.plane.workdir / "claims",
            self._read,
            self._token,
            volume_owner(self.pod, images[: len(specs)]),
        )
        for i, (spec, image) in enumerate(zip([*specs, *init_specs], images, strict=True)):
            env = container_env(self.pod, spec, image, self._read, self.plane.network.api_server)
            process = ContainerProcess(
                self.pod, spec, image, env, self.link, self.directory, volumes, self.plane.home
            )
            (self.containers if i < len(specs) else self.init_containers).append(process)
        self.plane.create_logs_object(self)
        for container in self.init_containers[:1] or self.containers:
            container.start()
        self.thread.start()

    # -- run -----------------------------------------------------------------------------------

    def _run(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.stopping.is_set():
            try:
                if self._initialized(policy):
                    for container in self.containers:
                        container.tick(policy)
                self._report(policy)
            except Exception as exc:  # keep the pod's thread alive; the error is reported
                log.exception("pod %s", self.key)
                self.error = f"{type(exc).__name__}: {exc}"
            if self.finished:
                return
            self.stopping.wait(0.5)

    def _initialized(self, policy: str) -> bool:
        """Whether every init container has completed (the next one, then the containers,
        started as each completes); ``init_failed`` once one failed for good."""
        pending = [c for c in self.init_containers if c.terminated is None or c.restart_at]
        while pending and not self.init_failed:
            current = pending[0]
            current.tick("Never" if policy == "Never" else "OnFailure")
            if current.terminated is None or current.restart_at is not None:
                return False
            if current.terminated["exitCode"] != 0:
                self.init_failed = True
                return False
            pending.pop(0)
            for container in pending[:1] or self.containers:
                container.start()
        return not self.init_failed

    def _report(self, policy: str) -> None:
        statuses = [c.status() for c in self.containers]
        ended = all(c.terminated is not None and c.restart_at is None for c in self.containers)
        ready = all(c.ready for c in self.containers) and not ended
        status: dict[str, Any] = {"containerStatuses": statuses}
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.init_failed:
            ended = True
            status["phase"] = "Failed"
            self.finished = True
        elif ended and policy != "Always":
            failed = any(c.terminated["exitCode"] != 0 for c in self.containers)
            status["phase"] = "Failed" if failed else "Succeeded"
            self.finished = True
        flag = "True" if ready else "False"
        reason = None if ready else ("PodCompleted" if ended else "ContainersNotReady")
        comparable = Reported(
            json.dumps(statuses, sort_keys=True, default=str), flag, status.get("phase")
        )
        if comparable == self._reported:
            return
        conditions = []
        for kind in ("Ready", "ContainersReady"):
            condition = {"type": kind, "status": flag, "lastTransitionTime": now()}
            if reason:
                condition["reason"] = reason
            conditions.append(condition)
        status["conditions"] = conditions
        try:
            self.plane.core.patch_namespaced_pod_status(
                self.pod["metadata"]["name"],
                self.pod["metadata"]["namespace"],
                {"status": status},
            )
        except ApiException as exc:
            if exc.status == 404:
                self.stopping.set()
                return
            raise
        self._reported = comparable

    def observe(self, pod: dict[str, Any]) -> None:
        """The pod as the API server now has it: when its readiness is not the one this runtime
        last reported (the node controller marks every pod of a node it lost touch with not
        ready), the next tick reports it again, as a kubelet's status manager reconciles."""
        reported = self._reported
        if reported is None:
            return
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
        if ready != reported.ready:
            self._reported = None

    def stop(self) -> None:
        self.stopping.set()
        grace = min(10.0, float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
        for container in [*self.init_containers, *self.containers]:
            container.stop(grace)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=15)
        if self.link is not None:
            self.plane.network.remove_pod(self.uid)
            self.link = None

    # -- for tests -----------------------------------------------------------------------------

    def logs(self, container: str | None = None) -> str:
        name = container or self.containers[0].name
        path = self.directory / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""


class DataPlane:
    def __init__(
        self,
        api_client: client.ApiClient,
        cluster: Any,
        workdir: Path,
        images: Images,
    ) -> None:
        self.api_client = api_client
        self.core: Any = client.CoreV1Api(api_client)
        self.discovery: Any = client.DiscoveryV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.admission: Any = client.AdmissionregistrationV1Api(api_client)
        self.node = cluster.node
        host = api_client.configuration.host.removeprefix("https://")
        api_host, api_port = host.rsplit(":", 1)
        self.network = PodNetwork(cluster.pod_cidr, (api_host, int(api_port)))
        self.workdir = workdir
        self.images = images
        self.home = [Path(sys.base_prefix), REPO]
        self.pods: dict[str, PodRuntime] = {}
        self.failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._enabled: set[str] = set()
        self._revision = 0

    # -- life ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[DataPlane]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> DataPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.network.up()
        try:
            self.install_policy()
            for target in (self._watch, self._dns_loop):
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        self._enabled.clear()
        with contextlib.suppress(ApiException):
            self.admission.delete_mutating_admission_policy_binding(POLICY)
        with contextlib.suppress(ApiException):
            self.admission.delete_mutating_admission_policy(POLICY)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(HOME_NAMESPACE)
        with self._lock:
            pods = list(self.pods.values())
            self.pods.clear()
        for pod in pods:
            pod.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.network.down()

    def install_policy(self) -> None:
        """(Re)write the admission policy for the images known now, its binding, the home
        namespace and the parameters."""
        self._ensure_home()
        self._revision += 1
        policy, binding = _policy(
            self.images, sorted({HOME_NAMESPACE, *self._enabled}), self._revision
        )
        for obj, create, replace, read in (
            (
                policy,
                self.admission.create_mutating_admission_policy,
                self.admission.replace_mutating_admission_policy,
                self.admission.read_mutating_admission_policy,
            ),
            (
                binding,
                self.admission.create_mutating_admission_policy_binding,
                self.admission.replace_mutating_admission_policy_binding,
                self.admission.read_mutating_admission_policy_binding,
            ),
        ):
            try:
                create(obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = read(obj["metadata"]["name"])
                obj["metadata"]["resourceVersion"] = current.metadata.resource_version
                replace(obj["metadata"]["name"], obj)
        self._wait_effective()

    def _ensure_home(self) -> None:
        """The home namespace exists (after a previous run's deletion has finished)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                found = self.core.read_namespace(HOME_NAMESPACE)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                with contextlib.suppress(ApiException):
                    self.core.create_namespace(
                        {
                            "apiVersion": "v1",
                            "kind": "Namespace",
                            "metadata": {"name": HOME_NAMESPACE},
                        }
                    )
                continue
            if found.status.phase == "Active":
                return
            time.sleep(0.2)
        raise DataPlaneError(f"namespace {HOME_NAMESPACE} is still terminating after 120s")

    def _wait_effective(self) -> None:
        """Until admission annotates a dry-run pod in the home namespace with the revision just
        written (policies and parameters reach admission through informers)."""
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "data-plane-probe-"},
            "spec": {"containers": [{"name": "c", "image": self.images.repositories[0]}]},
        }
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline:
            try:
                created = self.core.create_namespaced_pod(HOME_NAMESPACE, probe, dry_run="All")
                seen = (created.metadata.annotations or {}).get(REVISION)
            except ApiException as exc:  # no parameters seen yet: the policy denies
                seen = f"HTTP {exc.status}: {exc.body}"
            if seen == str(self._revision):
                return
            time.sleep(0.1)
        raise DataPlaneError(
            f"the admission policy did not reach revision {self._revision} within 60s "
            f"(a dry-run pod showed {seen})"
        )

    def enable(self, namespace: str) -> None:
        """Pods created in ``namespace`` from now on run as processes; pods already there stay
        kwok's. The namespace need not exist yet (``pulumi up`` may create it): nothing is
        written to it. Returns once the API server's admission applies the change."""
        self._enabled.add(namespace)
        self.install_policy()

    def disable(self, namespace: str) -> None:
        """New pods in ``namespace`` are kwok's alone again (running ones keep their processes
        until they are deleted)."""
        self._enabled.discard(namespace)
        self.install_policy()

    # -- pods ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.core.list_pod_for_all_namespaces(
                        field_selector=f"spec.nodeName={self.node}"
                    )
                    version = listed.metadata.resource_version
                    alive = set()
                    for pod in listed.items:
                        data = self.api_client.sanitize_for_serialization(pod)
                        alive.add(data["metadata"]["uid"])
                        self._on_pod("MODIFIED", data)
                    for key, runtime in list(self.pods.items()):
                        if runtime.uid not in alive:
                            self._forget(key)
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node}",
                    resource_version=version,
                    timeout_seconds=30,
                    _preload_content=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["raw_object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] == "ERROR":
                        version = None
                        break
                    self._on_pod(event["type"], obj)
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                log.warning("pod watch: %s", exc)
                time.sleep(1)
            except Exception:  # the watch is the data plane's lifeline: log and go on
                log.exception("pod watch")
                version = None
                time.sleep(1)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if (meta.get("annotations") or {}).get(ANNOTATION) != "process":
            return
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            self._forget(key)
            return
        status = pod.get("status") or {}
        with self._lock:
            known = self.pods.get(key)
            if known is not None and known.uid != meta["uid"]:
                stale, known = known, None
            else:
                stale = None
        if stale is not None:
            self._forget(key)
        if known is not None:
            known.observe(pod)
            return
        if status.get("phase") != "Running" or not status.get("podIP"):
            return
        runtime = PodRuntime(self, pod)
        with self._lock:
            self.pods[key] = runtime
        try:
            runtime.start()
        except Exception as exc:
            log.exception("starting pod %s", key)
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            runtime.error = self.failed[key]
            with contextlib.suppress(ApiException):
                self.core.patch_namespaced_pod_status(
                    meta["name"],
                    meta["namespace"],
                    {
                        "status": {
                            "containerStatuses": [
                                {
                                    "name": c["name"],
                                    "image": c["image"],
                                    "imageID": "",
                                    "ready": False,
                                    "restartCount": 0,
                                    "state": {
                                        "waiting": {
                                            "reason": "CreateContainerError",
                                            "message": str(exc)[:500],
                                        }
                                    },
                                }
                                for c in pod["spec"]["containers"]
                            ]
                        }
                    },
                )

    def _forget(self, key: str) -> None:
        with self._lock:
            runtime = self.pods.pop(key, None)
        if runtime is not None:
            threading.Thread(target=runtime.stop, daemon=True, name=f"stop {key}").start()

    def create_logs_object(self, pod: PodRuntime) -> None:
        meta = pod.pod["metadata"]
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "spec": {
                "logs": [
                    {"containers": [c.name], "logsFile": str(c.log_path), "follow": True}
                    for c in pod.containers
                ]
            },
        }
        try:
            self.custom.create_namespaced_custom_object(
                "kwok.x-k8s.io", "v1alpha1", meta["namespace"], "logs", body
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    # -- names ---------------------------------------------------------------------------------

    def _entries(self, namespace: str) -> dict[str, list[str]]:
        host = self.network.api_endpoint[0]
        entries = {
            host: [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
        }
        slices = self.discovery.list_namespaced_endpoint_slice(namespace).items
        for s in slices:
            service = (s.metadata.labels or {}).get("kubernetes.io/service-name")
            ready = sorted(a for e in s.endpoints or [] if e.conditions.ready for a in e.addresses)
            if not service or not ready:
                continue
            names = [
                service,
                f"{service}.{namespace}",
                f"{service}.{namespace}.svc",
                f"{service}.{namespace}.svc.cluster.local",
            ]
            entries.setdefault(ready[0], []).extend(names)
        return entries

    def write_dns(self, pod: PodRuntime, entries: dict[str, list[str]] | None = None) -> None:
        if entries is None:
            entries = self._entries(pod.pod["metadata"]["namespace"])
        write_in_place(pod.directory / "hosts", hosts_file(pod.pod, pod.ip, entries))
        write_in_place(pod.directory / "resolv.conf", "# no cluster DNS: names are in /etc/hosts\n")

    def _dns_loop(self) -> None:
        while not self._stop.wait(HOSTS_REFRESH_S):
            with self._lock:
                pods = list(self.pods.values())
            by_namespace: dict[str, dict[str, list[str]]] = {}
            for pod in pods:
                namespace = pod.pod["metadata"]["namespace"]
                try:
                    if namespace not in by_namespace:
                        by_namespace[namespace] = self._entries(namespace)
                    if pod.directory.exists():
                        self.write_dns(pod, by_namespace[namespace])
                except Exception as exc:  # the API server gone for a while included: go on
                    log.warning("hosts of %s: %s", pod.key, exc)

    # -- for tests -----------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> PodRuntime | None:
        with self._lock:
            return self.pods.get(f"{namespace}/{name}")

    def pods_in(self, namespace: str) -> list[PodRuntime]:
        with self._lock:
            return [p for k, p in self.pods.items() if k.startswith(f"{namespace}/")]
