"""Processes of the local stack: started in a session of their own, logging to a file, with a
pid file, so a later process (another ``portalctl``, ``portalctl local down``) finds and stops
them; and the loopback ports and HTTP checks that say when a server is up."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class ServerError(RuntimeError):
    """A server could not be started or stopped; the message names it and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` (and its log tail) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ServerError(f"{what} exited during start-up{log_tail(log)}")
        time.sleep(0.05)
    raise ServerError(f"{what} was not ready after {timeout:g}s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n  " + "\n  ".join(tail)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def stop_pid(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal ``pid`` (and its process group when it leads one), escalating to SIGKILL."""
    if not pid_alive(pid):
        return
    try:
        pgid = os.getpgid(pid)
        if pgid == pid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def is_root() -> bool:
    return os.geteuid() == 0


def find_binary(name: str, extra_globs: Sequence[str] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in (*extra_globs, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise ServerError(f"{name} is not installed; run `make deps` (scripts/bootstrap.sh) first")


@dataclass
class Process:
    """A long-running child started in its own session, logging to a file, with a pid file."""

    name: str
    directory: Path
    argv: list[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    pid: int | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / f"{self.name}.pid"

    def start(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.pid = self._popen.pid
        self.pidfile.write_text(str(self.pid))
        return self.pid

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        pid = self.pid or self.read_pid()
        return pid is not None and pid_alive(pid)

    def read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        pid = self.pid or self.read_pid()
        if pid is not None:
            stop_pid(pid, timeout, sig)
            if self._popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=1)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        self.pid = None
        self._popen = None

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like."""
        self.stop(timeout=5, sig=signal.SIGKILL)
