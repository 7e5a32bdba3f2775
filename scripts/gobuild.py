"""Building Go programs from the module proxy into a cache: what ``scripts/cluster.py`` (the
control plane, kwok, Prometheus) and ``scripts/toolchain.py`` (the Pulumi CLI and providers) share.

Standard library only: both scripts run under the system ``python3`` before any virtualenv exists.

- ``Go(error, say)``: the ``go`` command with one-line failures of the caller's error type and the
  caller's progress prefix; ``Go.build_logged`` runs a long ``go build -v`` niced, its output to a
  log, a progress line every 20 s and the compiler's last lines on failure.
- ``go_env()``: never a toolchain download, no cgo, read-only modules.
- ``locked(path)``: an exclusive file lock (parallel builds of the same pins wait for each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PROGRESS_EVERY_S = 20
# a line of `go build -v` that names a package it compiled (anything else is a message)
_PACKAGE_LINE = re.compile(r"[\w./~+-]+")


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def go_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env.setdefault("GOTOOLCHAIN", "local")  # never download a toolchain behind the user's back
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly -buildvcs=false").strip()
    return env


def directives(gomod_text: str) -> list[str]:
    """A release's own ``go``, ``godebug`` and ``toolchain`` lines (they decide the binaries'
    behaviour), to carry into a wrapper module."""
    return [
        line for line in gomod_text.splitlines() if re.match(r"^(go|godebug|toolchain)\s", line)
    ]


@contextlib.contextmanager
def locked(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; ``waiting`` is called once if another process holds
    it (to say what we wait for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Go:
    """The ``go`` command for one script: its failures raised as ``error`` (one line), its
    progress printed through ``say``."""

    def __init__(self, error: Callable[[str], Exception], say: Callable[[str], None]) -> None:
        self.error = error
        self.say = say

    def run(self, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
        if shutil.which("go") is None:
            raise self.error("the `go` command is missing: install Go 1.26 or newer")
        proc = subprocess.run(
            ["go", *args],
            cwd=cwd,
            env=dict(env if env is not None else go_env()),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            raise self.error(f"go {' '.join(args)} (in {cwd}) failed: {' | '.join(detail[-5:])}")
        return proc.stdout

    def locked(
        self, path: Path, waiting: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """``locked(path)``, saying ``waiting`` if another process holds the lock."""
        return locked(path, (lambda: self.say(waiting)) if waiting else None)

    def version(self, cwd: Path) -> str:
        return self.run(["env", "GOVERSION"], cwd).strip()

    def module_dir(self, cwd: Path, module: str, env: Mapping[str, str] | None = None) -> Path:
        """Where the module ``cwd`` requires is unpacked in the module cache."""
        return Path(self.run(["list", "-m", "-f", "{{.Dir}}", module], cwd, env).strip())

    def download(self, module: str, version: str) -> dict[str, Any]:
        """``go mod download -json module@version``: its ``Dir``, ``GoMod``..."""
        with tempfile.TemporaryDirectory() as tmp:
            out = self.run(["mod", "download", "-json", f"{module}@{version}"], Path(tmp))
        info: dict[str, Any] = json.loads(out)
        if info.get("Error"):
            raise self.error(f"{module}@{version}: {info['Error']}")
        return info

    def packages(self, cwd: Path, *targets: str, env: Mapping[str, str] | None = None) -> int:
        """How many packages building ``targets`` compiles (for the progress lines)."""
        return len(self.run(["list", "-deps", *targets], cwd, env).split())

    def build_logged(
        self,
        label: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None,
        log: Path,
        total: int = 0,
    ) -> None:
        """Run one go command niced (``env`` None: ``go_env()``), its output appended to
        ``log``; a progress line every 20 s (with ``total``: packages compiled out of it, as
        ``go build -v`` names them) and, on failure, its last lines of output then one line
        naming the log."""
        started = time.monotonic()
        compiled, last = 0, ""
        tail: deque[str] = deque(maxlen=40)
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(PROGRESS_EVERY_S):
                phase = "running"
                if total:
                    phase = f"compiled {compiled} of ~{total} packages"
                    phase += ", linking" if compiled >= total * 0.97 else ""
                    phase += f" (last: {last})" if last else ""
                self.say(f"[{clock(time.monotonic() - started)}] {label}: {phase}")

        ticker = threading.Thread(target=report, daemon=True)
        with log.open("a") as sink:
            sink.write(f"$ (cd {cwd} && {shlex.join(argv)})\n")
            sink.flush()
            proc = subprocess.Popen(
                ["nice", "-n", "10", *argv],
                cwd=cwd,
                env=dict(env if env is not None else go_env()),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            ticker.start()
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                text = line.rstrip()
                if total and _PACKAGE_LINE.fullmatch(text):
                    compiled, last = compiled + 1, text
                elif text:
                    tail.append(text)
            code = proc.wait()
            stop.set()
        if code != 0:
            for line in tail:
                print(f"  {line}", file=sys.stderr)
            raise self.error(
                f"{label} exited {code} after {clock(time.monotonic() - started)}; "
                f"its last output is above, the whole log in {log}"
            )
