"""One pod's containers as processes: what a kubelet and a container runtime do, on this machine.

For a pod kwok has started (Running, with an IP, not ready), ``PodRuntime``:

- resolves each container's environment as the kubelet does (``value`` with ``$(VAR)``
  references, ``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``, the
  ``KUBERNETES_SERVICE_*`` variables) and expands ``$(VAR)`` in its command and args;
- writes its volumes (emptyDir, configMap, secret, a directory per claim, and the projected
  service-account token from the TokenRequest API with the cluster's CA and the namespace);
- starts each container's program (``images.py``) in the pod's network namespace, in a private
  mount namespace whose root is a tmpfs holding the host's ``/usr`` and ``/etc`` read-only, the
  image's files and the volumes at their mount paths, as the pod's ``runAsUser`` (or the account
  the image needs); stdout and stderr go to a CRI-format log file that kwok serves as the pod's
  log;
- runs the readiness probes (httpGet, tcpSocket, exec in the pod's network namespace) and reports
  the pod's status to the API the way a kubelet does: containers running and ready, Ready and
  ContainersReady conditions, restarts (``restartPolicy: Always``), and for a pod whose
  containers all ended (a Job's), phase Succeeded or Failed with each exit code.

Not done: liveness and startup probes (readiness gates the traffic; a hung process is not
restarted), resource limits, image pulls (``images.py`` knows what each image runs).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.dataplane.images import Image
from tests.dataplane.network import PodLink

# host paths visible (read-only) in every container's root at the same path
HOST_DIRS = ("/usr", "/etc")
PROBE_PERIOD_S = 0.5
MAX_RESTART_BACKOFF_S = 10.0

Reader = Callable[[str, str, str], dict[str, str]]
"""(kind "secret" | "configmap", namespace, name) -> its data, decoded."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)``: replaced when VAR is defined, kept as written when not; ``$$``
    escapes a dollar."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    if path not in values:
        raise RuntimeError(f"fieldRef {path} is not supported by this runtime")
    return str(values[path])


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    image: Image,
    read: Reader,
    api: tuple[str, int],
) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {"HOSTNAME": pod["metadata"]["name"], **image.env}
    env["KUBERNETES_SERVICE_HOST"] = "kubernetes.default.svc"
    env["KUBERNETES_SERVICE_PORT"] = env["KUBERNETES_SERVICE_PORT_HTTPS"] = str(api[1])
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            if key in source:
                ref = source[key]
                try:
                    data = read(kind, ns, ref["name"])
                except KeyError:
                    if ref.get("optional"):
                        continue
                    raise
                env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secret" if "secretKeyRef" in source else "configmap"
            ref = source["secretKeyRef" if kind == "secret" else "configMapKeyRef"]
            try:
                env[name] = read(kind, ns, ref["name"])[ref["key"]]
            except KeyError:
                if not ref.get("optional"):
                    raise RuntimeError(
                        f"{kind} {ns}/{ref['name']} has no key {ref['key']} (env {name})"
                    ) from None
        else:
            raise RuntimeError(f"env {name}: {sorted(source)} is not supported by this runtime")
    return env


def command_of(container: Mapping[str, Any], image: Image, env: Mapping[str, str]) -> list[str]:
    """Kubernetes' rule: ``command`` replaces the entrypoint, ``args`` the image's command."""
    command = container.get("command")
    args = container.get("args")
    if command:
        argv = list(command) + list(args or [])
    else:
        argv = list(image.entrypoint) + (list(args) if args is not None else list(image.cmd))
    return [expand(a, env) for a in argv]


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


def _write_items(
    target: Path,
    data: Mapping[str, str],
    items: list[dict[str, Any]] | None,
    mode: int,
    group: int | None = None,
) -> None:
    """The keys as files of ``mode``; with ``group`` (the pod's fsGroup) group-owned by it, as
    the kubelet does, so a ``0440`` Secret file is readable by the pod's processes."""
    target.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, rel in chosen:
        if key not in data:
            continue
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[key])
        path.chmod(mode)
        if group is not None:
            os.chown(path, 0, group)


@dataclass
class Volumes:
    """The pod's volumes as host directories (name -> path)."""

    paths: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def materialize(
        cls,
        pod: Mapping[str, Any],
        directory: Path,
        claims: Path,
        read: Reader,
        token: Callable[[str, int], str],
        owner: tuple[int, int],
    ) -> Volumes:
        """Every volume of the pod, owned by ``owner`` (uid, gid: the pod's runAsUser and
        fsGroup, or the account its image must run as), group-writable."""
        ns = pod["metadata"]["namespace"]
        spec = pod["spec"]
        out = cls()
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            path = directory / "volumes" / name
            if "persistentVolumeClaim" in volume:
                path = claims / ns / volume["persistentVolumeClaim"]["claimName"]
                path.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in volume:
                path.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume or "secret" in volume:
                kind = "configmap" if "configMap" in volume else "secret"
                ref = volume["configMap" if kind == "configmap" else "secret"]
                ref_name = ref.get("name") or ref.get("secretName")
                try:
                    data = read(kind, ns, ref_name)
                except KeyError:
                    if not ref.get("optional"):
                        raise RuntimeError(
                            f"volume {name}: {kind} {ns}/{ref_name} not found"
                        ) from None
                    data = {}
                _write_items(path, data, ref.get("items"), ref.get("defaultMode", 0o644), owner[1])
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    if "serviceAccountToken" in source:
                        sat = source["serviceAccountToken"]
                        text = token(
                            spec.get("serviceAccountName", "default"),
                            sat.get("expirationSeconds", 3607),
                        )
                        _write_items(
                            path, {"token": text}, [{"key": "token", "path": sat["path"]}], 0o644
                        )
                    elif "configMap" in source:
                        ref = source["configMap"]
                        _write_items(
                            path, read("configmap", ns, ref["name"]), ref.get("items"), 0o644
                        )
                    elif "downwardAPI" in source:
                        for item in source["downwardAPI"]["items"]:
                            value = field_value(pod, item["fieldRef"]["fieldPath"])
                            _write_items(
                                path, {"v": value}, [{"key": "v", "path": item["path"]}], 0o644
                            )
            else:
                raise RuntimeError(f"volume {name}: {sorted(volume)} is not supported here")
            os.chown(path, *owner)
            if "emptyDir" in volume:  # world-writable, as the kubelet makes it
                path.chmod(0o777)
            else:
                path.chmod(0o2775 if path.is_dir() else 0o644)
            out.paths[name] = path
        return out


# --------------------------------------------------------------------------------------------
# A container's process
# --------------------------------------------------------------------------------------------


def _mount_point(target: str, directory: bool) -> str:
    if directory:
        return f"mkdir -p {target}"
    return f'[ -e {target} ] || {{ mkdir -p "$(dirname {target})" && touch {target}; }}'


def _mount_script(
    root: Path, files: Mapping[str, Path], mounts: list[tuple[str, Path, bool]], home: list[Path]
) -> str:
    """Shell that builds the container's root in a private mount namespace, then execs "$@"."""
    q = shlex.quote
    r = str(root)
    lines = [
        "set -e",
        f"mount -t tmpfs -o mode=755,size=64m portal-root {q(r)}",
        f"cd {q(r)}",
        "mkdir -p proc dev sys tmp run var/tmp srv root",
        "chmod 1777 tmp var/tmp",
        "ln -s ../run var/run",
        "for l in bin lib lib64 sbin; do [ -e /usr/$l ] && ln -s usr/$l $l; done",
    ]
    overlays: list[str] = []
    targets = [*files, *(t for t, _, _ in mounts)]
    for host in HOST_DIRS:
        if any(t.startswith(host + "/") and not Path(t).exists() for t in targets):
            # a volume mounted where the host has nothing (``/etc/alertmanager``): the host's
            # directory seen through an overlay whose writes stay in the container's root, so
            # the mount point can be made; read-only once the volumes are mounted
            layer = f"run/.layers{host}"
            lines += [
                f"mkdir -p .{host} {layer}/upper {layer}/work",
                f"mount -t overlay portal-layer -o lowerdir={host},upperdir={layer}/upper,"
                f"workdir={layer}/work .{host}",
            ]
            overlays.append(host)
            continue
        lines += [
            f"mkdir -p .{host}",
            f"mount --rbind {host} .{host}",
            f"mount -o remount,bind,ro .{host}",
        ]
    for path in home:  # the interpreter's installation and the repository, read-only
        lines += [
            f"mkdir -p {q('.' + str(path))}",
            f"mount --rbind {q(str(path))} .{q(str(path))}",
            f"mount -o remount,bind,ro .{q(str(path))}",
        ]
    lines += ["mount -t proc proc proc", "mount --rbind /dev dev", "mount --rbind /sys sys"]
    for target, source in files.items():
        t = q("." + target)
        lines += [
            _mount_point(t, source.is_dir()),
            f"mount --bind {q(str(source))} {t}",
            f"mount -o remount,bind,ro {t}",
        ]
    for target, source, read_only in mounts:
        t = q("." + target)
        lines += [_mount_point(t, source.is_dir()), f"mount --bind {q(str(source))} {t}"]
        if read_only:
            lines.append(f"mount -o remount,bind,ro {t}")
    lines += [f"mount -o remount,ro .{host}" for host in overlays]
    lines.append('exec chroot "$@"')
    return "\n".join(lines)


class LogPump:
    """A stream's lines to a CRI-format log file (what kwok serves as the container's log)."""

    def __init__(self, stream: Any, name: str, sink: Any, lock: threading.Lock) -> None:
        self.thread = threading.Thread(
            target=self._run, args=(stream, name, sink, lock), daemon=True
        )
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=5)

    @staticmethod
    def _run(stream: Any, name: str, sink: Any, lock: threading.Lock) -> None:
        for raw in iter(stream.readline, b""):
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            line = raw.decode(errors="replace").rstrip("\n")
            with lock:
                sink.write(f"{stamp} {name} F {line}\n")
                sink.flush()
        stream.close()


@dataclass
class Probe:
    """A readiness probe (httpGet, tcpSocket or exec), run every PROBE_PERIOD_S."""

    spec: Mapping[str, Any]
    ports: Mapping[str, int]
    pod_ip: str
    netns: str
    env: Mapping[str, str]
    failures: int = 0
    successes: int = 0
    last: str = ""
    in_container: Callable[[list[str]], list[str]] | None = None
    """How to run a command in the container (its root and volumes), for exec probes."""

    def _port(self, port: Any) -> int:
        return int(port) if str(port).isdigit() else int(self.ports[str(port)])

    def check(self) -> bool:
        timeout = float(self.spec.get("timeoutSeconds", 1))
        try:
            if "httpGet" in self.spec:
                get = self.spec["httpGet"]
                conn = http.client.HTTPConnection(
                    get.get("host") or self.pod_ip, self._port(get["port"]), timeout=timeout
                )
                try:
                    conn.request("GET", get.get("path", "/"), headers={"User-Agent": "kube-probe"})
                    resp = conn.getresponse()
                    resp.read()
                    self.last = f"HTTP {resp.status}"
                    return 200 <= resp.status < 400
                finally:
                    conn.close()
            if "tcpSocket" in self.spec:
                port = self._port(self.spec["tcpSocket"]["port"])
                with socket.create_connection((self.pod_ip, port), timeout=timeout):
                    self.last = "connected"
                    return True
            if "exec" in self.spec and self.in_container is not None:
                # As a kubelet runs it: in the container, which sees its own files.
                argv = self.in_container(list(self.spec["exec"]["command"]))
                proc = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
                self.last = f"exit {proc.returncode}"
                return proc.returncode == 0
            if "exec" in self.spec:
                argv = [
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    "/usr/bin/env",
                    "-i",
                    *(f"{k}={v}" for k, v in self.env.items()),
                    *self.spec["exec"]["command"],
                ]
                proc = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
                self.last = f"exit {proc.returncode}"
                return proc.returncode == 0
        except (OSError, http.client.HTTPException, subprocess.TimeoutExpired) as exc:
            self.last = f"{type(exc).__name__}: {exc}"
            return False
        self.last = f"unsupported probe {sorted(self.spec)}"
        return False


class ContainerProcess:
    """One container: its program's process, restarts, readiness and the status it reports."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        spec: Mapping[str, Any],
        image: Image,
        env: dict[str, str],
        link: PodLink,
        directory: Path,
        volumes: Volumes,
        home: list[Path],
    ) -> None:
        self.pod = pod
        self.spec = spec
        self.name = str(spec["name"])
        self.image = image
        self.env = env
        self.link = link
        self.directory = directory
        self.volumes = volumes
        self.home = home
        self.log_path = directory / "logs" / f"{self.name}.log"
        self.restarts = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at: str | None = None
        self.terminated: dict[str, Any] | None = None
        self.last_state: dict[str, Any] = {}
        self.restart_at: float | None = None
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.ready = False
        ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports") or [] if "name" in p}
        probe = spec.get("readinessProbe")
        self.probe = (
            Probe(probe, ports, link.ip, link.netns, env, in_container=self.argv) if probe else None
        )
        self._log_lock = threading.Lock()
        self._sink: Any = None
        self._pumps: list[LogPump] = []

    def _user(self) -> str:
        if self.image.user:
            return f"{self.image.user}:{self.image.user}"
        pod_sec = self.pod["spec"].get("securityContext") or {}
        sec = {**pod_sec, **(self.spec.get("securityContext") or {})}
        uid = sec.get("runAsUser", 0)
        gid = sec.get("runAsGroup", uid)
        return f"{uid}:{gid}"

    def _groups(self) -> list[str]:
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        # An image's own account joins the pod's fsGroup too (it owns the pod's files' group).
        return ["--groups", str(fs_group)] if fs_group is not None else []

    def argv(self, command: list[str] | None = None) -> list[str]:
        """The container's program (or ``command``) in the container's root and volumes."""
        root = self.directory / "rootfs" / self.name
        root.mkdir(parents=True, exist_ok=True)
        mounts = [
            (
                m["mountPath"],
                self.volumes.paths[m["name"]] / m.get("subPath", ""),
                bool(m.get("readOnly")),
            )
            for m in self.spec.get("volumeMounts") or []
        ]
        hosts = self.directory / "hosts"
        resolv = self.directory / "resolv.conf"
        mounts += [("/etc/hosts", hosts, True), ("/etc/resolv.conf", resolv, True)]
        script = _mount_script(root, self.image.files, mounts, self.home)
        workdir = self.spec.get("workingDir") or self.image.workdir
        if command is None:
            command = command_of(self.spec, self.image, self.env)
        return [
            "nsenter",
            f"--net=/run/netns/{self.link.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            self.name,
            f"--userspec={self._user()}",
            *self._groups(),
            str(root),
            "/usr/bin/env",
            "-i",
            f"--chdir={workdir}",
            *(f"{k}={v}" for k, v in self.env.items()),
            *command,
        ]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._sink is None:
            self._sink = self.log_path.open("a")
        self.popen = subprocess.Popen(
            self.argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._pumps = [
            LogPump(self.popen.stdout, "stdout", self._sink, self._log_lock),
            LogPump(self.popen.stderr, "stderr", self._sink, self._log_lock),
        ]
        self.started_at = now()
        self.terminated = None
        self.waiting = None
        self.restart_at = None
        self.ready = self.probe is None

    def tick(self, restart_policy: str) -> None:
        """Notice an exit, restart when the policy says so (with a growing back-off), probe."""
        if self.popen is not None and self.popen.poll() is not None:
            code = self.popen.returncode
            if code < 0:  # killed by a signal: the shell's convention, as a container reports
                code = 128 - code
            self.terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": self.started_at,
                "finishedAt": now(),
            }
            self.popen = None
            self.ready = False
            again = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
            if again:
                backoff = min(MAX_RESTART_BACKOFF_S, 2.0**self.restarts)
                self.restart_at = time.monotonic() + backoff
                self.waiting = ("CrashLoopBackOff", f"back-off {backoff:g}s restarting")
        if self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.last_state = {"terminated": self.terminated}
            self.restarts += 1
            self.start()
        if self.popen is not None and self.probe is not None:
            ok = self.probe.check()
            threshold = int(self.probe.spec.get("failureThreshold", 3))
            if ok:
                self.probe.failures = 0
                self.ready = True
            else:
                self.probe.failures += 1
                if self.probe.failures >= threshold:
                    self.ready = False

    @property
    def running(self) -> bool:
        return self.popen is not None

    def status(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.popen is not None:
            state = {"running": {"startedAt": self.started_at}}
        elif self.waiting is not None:
            state = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
        else:
            state = {"terminated": self.terminated}
        return {
            "name": self.name,
            "image": self.spec["image"],
            "imageID": "",
            "containerID": f"process://{self.popen.pid}" if self.popen else "",
            "ready": self.ready,
            "started": self.popen is not None,
            "restartCount": self.restarts,
            "state": state,
            "lastState": self.last_state,
        }

    def stop(self, grace: float) -> None:
        self.restart_at = None
        if self.popen is not None:
            stop_group(self.popen, grace)
            self.popen = None
        for pump in self._pumps:  # they end with the streams: every line is in the file
            pump.join()
        if self._sink is not None:
            with self._log_lock:
                self._sink.close()
            self._sink = None


def stop_group(popen: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        try:
            popen.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def volume_owner(pod: Mapping[str, Any], images: list[Image]) -> tuple[int, int]:
    security = pod["spec"].get("securityContext") or {}
    for image in images:
        if image.user:
            # The image's account owns the files; the group is the pod's fsGroup when it has
            # one, so the pod's other containers (an exporter beside Postgres) read them too.
            account = pwd.getpwnam(image.user)
            return account.pw_uid, int(security.get("fsGroup", account.pw_gid))
    uid = int(security.get("runAsUser", 0))
    return uid, int(security.get("fsGroup", security.get("runAsGroup", uid)))


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def hosts_file(pod: Mapping[str, Any], ip: str, entries: Mapping[str, list[str]]) -> str:
    """/etc/hosts of a pod: itself, and each name a cluster DNS would answer for (a Service's
    names -> one of its ready endpoints; the API server -> the relay)."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{ip}\t{pod['metadata']['name']}",
    ]
    lines += [f"{address}\t{' '.join(names)}" for address, names in sorted(entries.items())]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> bool:
    """Rewrite ``path`` keeping its inode (it is bind-mounted into running containers)."""
    if path.exists() and path.read_text() == text:
        return False
    with path.open("a+") as f:
        f.seek(0)
        f.truncate()
        f.write(text)
    return True
