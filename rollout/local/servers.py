"""Real servers on loopback, started from the installed system binaries.

The embedded default (``portalctl local``), the integration tests and the benchmarks all start
PostgreSQL, Redis, Prometheus, nginx and the exporters through this module (Alertmanager and
the alert receiver: ``rollout.local.alerting``). Every server runs in
a directory of its own, listens on 127.0.0.1 on a port it was given (``free_port()`` picks one),
logs to ``<dir>/<name>.log`` and records its pid in ``<dir>/<name>.pid`` so a later process (a
second ``portalctl`` invocation, ``portalctl local down``) can find and stop it.

PostgreSQL refuses to run as root; as root, its cluster is created and run as the ``postgres``
system user in a directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rollout.local.processes import (
    Process,
    ServerError,
    find_binary,
    http_ok,
    is_root,
    log_tail,
    pid_alive,
    port_open,
    wait_until,
)

# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster with trust auth on 127.0.0.1:``port``."""

    directory: Path
    port: int
    settings: Mapping[str, str] = field(default_factory=dict)
    host_auth: str = "trust"
    """How TCP connections authenticate (``scram-sha-256``: by password); the unix socket in
    ``directory`` always trusts the local user."""

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def socket_dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """Through the unix socket (trusted): the superuser's way in."""
        return f"postgresql://{user}@/{dbname}?host={self.directory}&port={self.port}"

    def _bin(self, name: str) -> str:
        return find_binary(name, (f"/usr/lib/postgresql/*/bin/{name}",))

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if is_root():
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if is_root():
            shutil.chown(self.directory, "postgres", "postgres")
            # The postgres user must be able to reach the directory through its parents.
            for parent in self.directory.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise ServerError(
                        f"PostgreSQL runs as the postgres user, which cannot enter {parent}; "
                        f"put the server directory somewhere world-traversable"
                    )

    def init(self) -> None:
        """initdb unless the data directory already holds a cluster."""
        if (self.datadir / "PG_VERSION").exists():
            return
        self._prepare_directory()
        result = self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.datadir),
                "--auth-local=trust",
                f"--auth-host={self.host_auth}",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"initdb failed in {self.datadir}: {result.stderr.strip()}")

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.init()
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "shared_preload_libraries": "pg_stat_statements",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **self.settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        result = self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"PostgreSQL did not start on port {self.port}: {result.stderr.strip()}"
                f"{log_tail(self.log)}"
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean) or ``immediate`` (a crash)."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"], check=False
        )

    def running(self) -> bool:
        return port_open(self.port)

    def create_database(self, name: str) -> str:
        """Create ``name`` if missing; return its DSN."""
        import psycopg  # local import: only callers that create databases need the driver

        with psycopg.connect(self.socket_dsn(), autocommit=True) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            exists = conn.execute(query, (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')  # name is chosen by our own code
        return self.dsn(name)

    def create_roles(self, dbname: str, passwords: Mapping[str, str]) -> None:
        """Apply ``contract/postgres_roles.sql`` to ``dbname`` as the superuser, as the cluster's
        roles Job does; ``passwords``: role -> password (files in a private directory)."""
        import tempfile

        from contract import access

        with tempfile.TemporaryDirectory(prefix="portal-roles-") as secrets:
            for role, file in access.PASSWORD_FILES.items():
                path = Path(secrets) / file
                path.write_text(passwords[role])
                path.chmod(0o600)
            script = Path(secrets) / access.ROLES_SCRIPT_FILE
            script.write_text(access.ROLES_SQL)
            argv = access.psql_command(str(script), secrets)
            argv[0] = self._bin("psql")
            env = {
                **os.environ,
                "PGHOST": str(self.directory),
                "PGPORT": str(self.port),
                "PGUSER": "postgres",
                "PGDATABASE": dbname,
            }
            result = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=120, check=False
            )
        if result.returncode != 0:
            raise ServerError(f"creating the roles in {dbname} failed: {result.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    directory: Path
    port: int
    password: str | None = None
    max_memory: str | None = None
    process: Process | None = None
    acl_file: Path | None = None
    """Redis's ACL file (``contract.access.redis_acl``): its users instead of a password."""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        argv = [
            find_binary("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.acl_file:
            argv += ["--aclfile", str(self.acl_file)]
        if self.max_memory:
            argv += ["--maxmemory", self.max_memory, "--maxmemory-policy", "allkeys-lru"]
        self.process = Process("redis", self.directory, argv)
        self.process.start()
        wait_until(
            lambda: port_open(self.port),
            timeout,
            f"Redis on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def stop(self) -> None:
        (self.process or Process("redis", self.directory, [])).stop()

    def kill(self) -> None:
        (self.process or Process("redis", self.directory, [])).kill()

    def running(self) -> bool:
        return port_open(self.port)


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


@dataclass
class PrometheusServer:
    """Prometheus with its config written to ``<dir>/prometheus.yml`` (and rule files beside it)."""

    directory: Path
    port: int
    config: str
    rule_files: Mapping[str, str] = field(default_factory=dict)
    retention: str = "1d"
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    def write_config(
        self, config: str | None = None, rule_files: Mapping[str, str] | None = None
    ) -> None:
        if config is not None:
            self.config = config
        if rule_files is not None:
            self.rule_files = rule_files
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.rule_files.items():
            (self.directory / name).write_text(text)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.config)
        tmp.replace(self.config_path)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.write_config()
        argv = [
            find_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'tsdb'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
            "--log.level=warn",
        ]
        self.process = Process("prometheus", self.directory, argv, cwd=self.directory)
        self.process.start()
        wait_until(
            lambda: http_ok(f"{self.url}/-/ready"),
            timeout,
            f"Prometheus on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def reload(self) -> None:
        """Re-read the config and rule files (POST /-/reload)."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise ServerError(f"Prometheus refused to reload: HTTP {resp.status}")

    def stop(self) -> None:
        (self.process or Process("prometheus", self.directory, [])).stop()

    def running(self) -> bool:
        return http_ok(f"{self.url}/-/ready")


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


@dataclass
class NginxServer:
    """nginx in the foreground with its prefix in ``directory``; ``reload()`` sends SIGHUP."""

    directory: Path
    port: int
    config: str
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    def write_config(self, config: str | None = None) -> None:
        if config is not None:
            self.config = config
        for sub in ("logs", "tmp"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.config)
        tmp.replace(self.config_path)

    def test_config(self) -> None:
        result = subprocess.run(
            [
                find_binary("nginx"),
                "-t",
                "-p",
                str(self.directory),
                "-c",
                str(self.config_path),
                "-e",
                str(self.directory / "logs" / "error.log"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServerError(f"nginx rejected {self.config_path}: {result.stderr.strip()}")

    def start(self, timeout: float = 20.0) -> NginxServer:
        self.write_config()
        self.test_config()
        argv = [
            find_binary("nginx"),
            "-p",
            str(self.directory),
            "-c",
            str(self.config_path),
            "-e",
            str(self.directory / "logs" / "error.log"),
            "-g",
            "daemon off;",
        ]
        self.process = Process("nginx", self.directory, argv)
        self.process.start()
        wait_until(
            lambda: port_open(self.port),
            timeout,
            f"nginx on port {self.port}",
            self.directory / "logs" / "error.log",
            self.process.alive,
        )
        return self

    def reload(self, config: str | None = None) -> None:
        """Write the new config, check it, then have the running nginx re-read it."""
        self.write_config(config)
        self.test_config()
        proc = self.process or Process("nginx", self.directory, [])
        pid = proc.pid or proc.read_pid()
        if pid is None or not pid_alive(pid):
            raise ServerError(f"nginx is not running (no live pid in {proc.pidfile})")
        os.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        (self.process or Process("nginx", self.directory, [])).stop()

    def running(self) -> bool:
        return port_open(self.port)


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------


@dataclass
class ExporterServer:
    """prometheus-postgres-exporter or prometheus-redis-exporter on a loopback port."""

    directory: Path
    port: int
    kind: str  # "postgres" | "redis"
    target: str  # a Postgres DSN or a Redis URL
    user: str | None = None
    """Redis: the ACL user to authenticate as."""
    password_file: Path | None = None
    """Redis: the exporter's password file (a JSON map of address to password)."""
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ExporterServer:
        env = dict(os.environ)
        if self.kind == "postgres":
            argv = [
                find_binary("prometheus-postgres-exporter"),
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
            env["DATA_SOURCE_NAME"] = (
                self.target + ("&" if "?" in self.target else "?") + "sslmode=disable"
            )
        elif self.kind == "redis":
            argv = [
                find_binary("prometheus-redis-exporter"),
                f"-web.listen-address=127.0.0.1:{self.port}",
                f"-redis.addr={self.target}",
            ]
            if self.user:
                argv.append(f"-redis.user={self.user}")
            if self.password_file:
                argv.append(f"-redis.password-file={self.password_file}")
        else:
            raise ValueError(f"unknown exporter kind {self.kind!r} (postgres | redis)")
        self.process = Process(f"{self.kind}-exporter", self.directory, argv, env=env)
        self.process.start()
        wait_until(
            lambda: http_ok(f"{self.url}/metrics", timeout=2),
            timeout,
            f"{self.kind} exporter on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def stop(self) -> None:
        (self.process or Process(f"{self.kind}-exporter", self.directory, [])).stop()


@dataclass
class PushgatewayServer:
    """The Prometheus Pushgateway: where ``portalctl`` publishes release events for alerting."""

    directory: Path
    port: int
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> PushgatewayServer:
        argv = [
            find_binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Debian's build defaults to one file under /var/lib/prometheus for every instance:
            # each stack keeps its own, or stacks would read each other's release events
            f"--persistence.file={self.directory / 'pushgateway.data'}",
        ]
        self.process = Process("pushgateway", self.directory, argv)
        self.process.start()
        wait_until(
            lambda: http_ok(f"{self.url}/-/ready", timeout=2),
            timeout,
            f"Pushgateway on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def stop(self) -> None:
        (self.process or Process("pushgateway", self.directory, [])).stop()
