"""The embedded default: the whole system on this machine, with real servers on loopback.

Postgres, Redis, two stable app instances behind nginx (weighted upstreams for the canary),
Prometheus scraping every instance each second (instances found through a file, so they come
and go without a restart) with the same alert rules as a cluster, Alertmanager with the same
routing (and a receiver writing what it gets to ``alerts/notifications.jsonl``), the two
exporters and a Pushgateway. Everything lives under one directory (``.portal/local``) with a
``state.json`` that says what runs where, so any later ``portalctl`` (or a crashed one's
successor) can find it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contract import access, alerts, prometheus_config
from contract.config import StackConfig, load_stack, stack_file
from contract.names import (
    PG_APP,
    PG_MIGRATOR,
    PG_READONLY,
    PG_ROLES,
    REDIS_APP_USER,
    REDIS_EXPORTER_USER,
)
from rollout.durable import replace_file
from rollout.local import alerting
from rollout.local.credentials import Credentials, StackAuth
from rollout.local.processes import (
    Process,
    ServerError,
    free_port,
    http_ok,
    pid_alive,
    port_open,
    stop_pid,
    wait_until,
)
from rollout.local.servers import (
    ExporterServer,
    NginxServer,
    PostgresServer,
    PrometheusServer,
    PushgatewayServer,
    RedisServer,
)
from rollout.local.state import read_state

LOCAL_DIR = Path(".portal/local")
STABLE_VERSION = "1.0.0"
STABLE_INSTANCES = 2
SEED_USERS = 2000
DATABASE = "portal"

Progress = Callable[[str], None]


STACK = "local"
DEFAULT_STACK_FILE = Path(__file__).with_name(f"Pulumi.{STACK}.yaml")
"""The shipped config of the local stack; ``portalctl local up`` copies it into the stack's
directory, where operators, drills and tests edit it."""


def local_config(root: Path | None = None) -> StackConfig:
    """The local stack's config: ``<root>/Pulumi.local.yaml`` when there is one, else the shipped
    default."""
    # not a Pulumi stack: credentials (a Slack URL to try the receivers) are plain text here
    if root is not None and stack_file(STACK, root).exists():
        return load_stack(STACK, root, plain_text_secrets=True)
    return load_stack(STACK, DEFAULT_STACK_FILE.parent, plain_text_secrets=True)


def python() -> str:
    return sys.executable


def app_argv(port: int) -> list[str]:
    return [python(), "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]


@dataclass
class Instance:
    name: str
    track: str
    version: str
    port: int
    pid: int | None = None
    env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "track": self.track,
            "version": self.version,
            "port": self.port,
            "pid": self.pid,
            "env": self.env or {},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(
            d["name"],
            d["track"],
            d["version"],
            int(d["port"]),
            d.get("pid"),
            dict(d.get("env") or {}),
        )


class LocalStack:
    """Start, find and stop the local system under ``root``."""

    def __init__(self, root: Path = LOCAL_DIR) -> None:
        self.root = Path(root).resolve()
        self.auth = StackAuth(self.root)
        """The key set of the API's tokens, the scrape token and the tokens of the clients."""

    # ------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def load(self) -> dict[str, Any]:
        """The saved state; ``ServerError`` when there is none, ``StateFileError`` naming the
        file when it is not the shape this code writes (nothing is changed then)."""
        if not self.state_path.exists():
            raise ServerError(f"no local stack in {self.root}: run `portalctl local up` first")
        return read_state(self.state_path)

    def save(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        replace_file(self.state_path, json.dumps(state, indent=1, sort_keys=True))

    # ------------------------------------------------------------------ versions

    def set_version_env(self, version: str, env: dict[str, str]) -> None:
        """Give ``version`` an environment of its own (the app's fault switches, for drills):
        the local stand-in for an image of that version that behaves so. Every instance of
        the version, canary or stable, starts with it."""
        state = self.load()
        versions = state.setdefault("versions", {})
        if env:
            versions[version] = dict(env)
        else:
            versions.pop(version, None)
        self.save(state)

    def version_env(self, state: dict[str, Any], version: str) -> dict[str, str]:
        return dict(state.get("versions", {}).get(version) or {})

    # ------------------------------------------------------------------ servers

    def postgres(self, state: dict[str, Any]) -> PostgresServer:
        return PostgresServer(self.root / "postgres", int(state["ports"]["postgres"]))

    def redis(self, state: dict[str, Any]) -> RedisServer:
        """Redis with the cluster's ACL users (no default user; ``contract.access``)."""
        directory = self.root / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        acl = directory / access.REDIS_ACL_FILE
        passwords = state["redis_passwords"]
        acl.write_text(access.redis_acl(passwords[REDIS_APP_USER], passwords[REDIS_EXPORTER_USER]))
        acl.chmod(0o600)
        return RedisServer(directory, int(state["ports"]["redis"]), acl_file=acl)

    def config(self) -> StackConfig:
        """This stack's config (its ``Pulumi.local.yaml``)."""
        return local_config(self.root)

    def prometheus(self, state: dict[str, Any]) -> PrometheusServer:
        cfg = self.config()
        ports = state["ports"]
        targets = prometheus_config.Targets(
            prometheus=f"127.0.0.1:{ports['prometheus']}",
            postgres_exporter=f"127.0.0.1:{ports['postgres_exporter']}",
            redis_exporter=f"127.0.0.1:{ports['redis_exporter']}",
            pushgateway=f"127.0.0.1:{ports['pushgateway']}",
            kube_state_metrics=None,
            app=(),
            app_credentials_file=str(self.auth.scrape_token_file),
            alertmanager=f"127.0.0.1:{ports['alertmanager']}",
        )
        conf = prometheus_config.build(cfg, targets, scrape_interval_s=1.0)
        for job in conf["scrape_configs"]:
            if job["job_name"] == prometheus_config.JOB_APP:
                job.pop("static_configs", None)
                job["file_sd_configs"] = [{"files": ["app-targets.json"], "refresh_interval": "1s"}]
        return PrometheusServer(
            self.root / "prometheus",
            int(ports["prometheus"]),
            yaml.safe_dump(conf, sort_keys=False),
            {prometheus_config.RULES_FILE: alerts.render_rules(cfg)},
        )

    # ------------------------------------------------------------------ credentials

    def credentials(self, users: int = SEED_USERS) -> Credentials:
        """Tokens of the stack's clients (an operator with the admin scope, users 1..``users``)."""
        return self.auth.credentials(users)

    # ------------------------------------------------------------------ alerting

    def alertmanager(self, state: dict[str, Any]) -> alerting.AlertmanagerServer:
        return alerting.alertmanager_server(self.root, self.config(), state)

    @property
    def notifications(self) -> Path:
        """What the local alert receiver got: one JSON line per notification."""
        return self.root / alerting.WEBHOOK_DIR / "notifications.jsonl"

    def nginx(self, state: dict[str, Any]) -> NginxServer:
        return NginxServer(self.root / "nginx", int(state["ports"]["nginx"]), nginx_config(state))

    # ------------------------------------------------------------------ app instances

    def app_env(self, state: dict[str, Any], instance: Instance) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        env.update(
            {
                "PORTAL_DATABASE_URL": state["database_url"],
                "PORTAL_REDIS_URL": state["redis_url"],
                "PORTAL_VERSION": instance.version,
                "PORTAL_TRACK": instance.track,
                "PORTAL_AUTH_KEYS_FILE": str(self.auth.keys_file),
                "PORTAL_METRICS_TOKEN_FILE": str(self.auth.scrape_token_file),
                "PORTAL_DB_POOL_SIZE": "4",
                "PORTAL_LOG_LEVEL": "WARNING",
            }
        )
        env.update(instance.env or {})
        return env

    def start_instance(
        self, state: dict[str, Any], instance: Instance, timeout: float = 60.0
    ) -> Instance:
        proc = Process(
            f"app-{instance.name}",
            self.root / "run",
            app_argv(instance.port),
            env=self.app_env(state, instance),
            cwd=Path(__file__).resolve().parents[2],
        )
        instance.pid = proc.start()
        wait_until(
            lambda: http_ok(f"{instance.url}/api/health"),
            timeout,
            f"app instance {instance.name} on port {instance.port}",
            proc.log,
            proc.alive,
        )
        return instance

    def stop_instance(self, instance: Instance, kill: bool = False) -> None:
        if instance.pid is not None and pid_alive(instance.pid):
            stop_pid(instance.pid, timeout=10, sig=9 if kill else 15)
        instance.pid = None

    def instances(self, state: dict[str, Any]) -> list[Instance]:
        return [Instance.from_dict(d) for d in state["instances"]]

    def write_routes(self, state: dict[str, Any], reload: bool = True) -> None:
        """Publish the instances to Prometheus (file discovery) and nginx (upstream weights)."""
        targets = [
            {"targets": [f"127.0.0.1:{d['port']}"], "labels": {"instance_name": d["name"]}}
            for d in state["instances"]
            if d.get("pid")
        ]
        sd = self.root / "prometheus" / "app-targets.json"
        sd.parent.mkdir(parents=True, exist_ok=True)
        tmp = sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(sd)
        if reload:
            self.nginx(state).reload()

    # ------------------------------------------------------------------ up / down

    def up(self, progress: Progress = print) -> dict[str, Any]:
        """Start what is not running (idempotent); return the state."""
        if self.state_path.exists():
            self.load()  # a malformed state is refused before anything is written
        self._prepare_root()
        self.auth.prepare()
        state = self._state()
        self._start_data(state, progress)
        self._start_instances(state, progress)
        self._start_monitoring(state, progress)
        self.wait_for_scrapes(state, progress)
        progress(f"local stack up: {state['nginx_url']} (Prometheus {state['prometheus_url']})")
        return state

    def _prepare_root(self) -> None:
        """The directory with its stack file; the postgres user must be able to enter it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not stack_file(STACK, self.root).exists():
            shutil.copyfile(DEFAULT_STACK_FILE, stack_file(STACK, self.root))
        self.config()  # a broken stack file stops here, before anything starts
        os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must enter it
        for parent in self.root.parents:  # the postgres user must reach its directory
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def _state(self) -> dict[str, Any]:
        """The saved state, or a new one with free ports; with the servers' URLs."""
        names = ("postgres", "redis", "prometheus", "nginx", "pushgateway", "alertmanager")
        if self.state_path.exists():
            state = self.load()  # a malformed one is refused, not replaced
        else:
            state = {
                "ports": {k: free_port() for k in (*names, "postgres_exporter", "redis_exporter")},
                "weight": 0,
                "stable_version": STABLE_VERSION,
                "canary_version": None,
                "instances": [],
            }
        ports = state["ports"]
        for name in (*names, "webhook"):  # a stack from before a server was added gets its port
            ports.setdefault(name, free_port())
        # The database's roles, as on a cluster: the instances run as portal_app, migrations and
        # seeding as portal_migrator, the analysis and the exporter as portal_readonly.
        passwords = state.setdefault("pg_passwords", {})
        for role in PG_ROLES:
            passwords.setdefault(role, secrets.token_hex(16))

        def url(role: str) -> str:
            return f"postgresql://{role}:{passwords[role]}@127.0.0.1:{ports['postgres']}/{DATABASE}"

        state["database_url"] = url(PG_APP)
        state["migrate_url"] = url(PG_MIGRATOR)
        state["readonly_url"] = url(PG_READONLY)
        redis_passwords = state.setdefault("redis_passwords", {})
        for user in (REDIS_APP_USER, REDIS_EXPORTER_USER):
            redis_passwords.setdefault(user, secrets.token_hex(16))
        state["redis_url"] = (
            f"redis://{REDIS_APP_USER}:{redis_passwords[REDIS_APP_USER]}"
            f"@127.0.0.1:{ports['redis']}/0"
        )
        state["prometheus_url"] = f"http://127.0.0.1:{ports['prometheus']}"
        state["nginx_url"] = f"http://127.0.0.1:{ports['nginx']}"
        state["pushgateway_url"] = f"http://127.0.0.1:{ports['pushgateway']}"
        state["alertmanager_url"] = f"http://127.0.0.1:{ports['alertmanager']}"
        self.save(state)
        return state

    def _start_data(self, state: dict[str, Any], progress: Progress) -> None:
        pg = self.postgres(state)
        if not pg.running():
            progress(f"starting PostgreSQL on port {pg.port}")
            pg.start()
        if not (pg.directory / ".created").exists():
            pg.create_database(DATABASE)
            (pg.directory / ".created").touch()
        pg.create_roles(DATABASE, state["pg_passwords"])
        redis = self.redis(state)
        if not redis.running():
            progress(f"starting Redis on port {redis.port}")
            redis.start()
        self._migrate_and_seed(state, progress)

    def _start_instances(self, state: dict[str, Any], progress: Progress) -> None:
        instances = self.instances(state)
        if not instances:
            instances = [
                Instance(f"stable-{i + 1}", "stable", state["stable_version"], free_port())
                for i in range(STABLE_INSTANCES)
            ]
        for inst in instances:
            if inst.pid is None or not pid_alive(inst.pid):
                where = f"({inst.track} {inst.version}) on port {inst.port}"
                progress(f"starting app {inst.name} {where}")
                self.start_instance(state, inst)
        state["instances"] = [i.to_dict() for i in instances]
        self.save(state)

    def _start_monitoring(self, state: dict[str, Any], progress: Progress) -> None:
        """nginx in front of the instances, the exporters, the Pushgateway and Prometheus."""
        ports = state["ports"]
        nginx = self.nginx(state)
        self.write_routes(state, reload=False)
        if not nginx.running():
            progress(f"starting nginx on port {nginx.port}")
            nginx.start()
        else:
            nginx.reload()
        exporters = self.root / "exporters"
        exporters.mkdir(parents=True, exist_ok=True)
        redis_address = f"redis://127.0.0.1:{ports['redis']}"
        password_file = exporters / access.REDIS_EXPORTER_PASSWORD_FILE
        password = state["redis_passwords"][REDIS_EXPORTER_USER]
        password_file.write_text(json.dumps({redis_address: password}))
        password_file.chmod(0o600)
        for server in (
            ExporterServer(
                exporters, int(ports["postgres_exporter"]), "postgres", state["readonly_url"]
            ),
            ExporterServer(
                exporters,
                int(ports["redis_exporter"]),
                "redis",
                redis_address,
                user=REDIS_EXPORTER_USER,
                password_file=password_file,
            ),
        ):
            if not port_open(server.port):
                progress(f"starting the {server.kind} exporter on port {server.port}")
                server.start()
        push = PushgatewayServer(self.root / "pushgateway", int(ports["pushgateway"]))
        if not port_open(push.port):
            progress(f"starting the Pushgateway on port {push.port}")
            push.start()
        alerting.start(self.root, self.config(), state, progress)
        prom = self.prometheus(state)
        if not prom.running():
            progress(f"starting Prometheus on port {prom.port} (1 s scrapes)")
            prom.start()
        else:  # the rules and the alerting target follow the stack file
            prom.write_config()
            prom.reload()

    def wait_for_scrapes(
        self, state: dict[str, Any], progress: Progress, timeout: float = 60.0
    ) -> None:
        """Until Prometheus has scraped every target once (its discovery starts a few seconds
        after it is ready), so the first release has data from its first check."""
        from rollout.prometheus import Prometheus, PrometheusError

        prom = Prometheus(state["prometheus_url"])
        # itself, the exporters, the Pushgateway, Alertmanager and the app instances
        expected = 5 + len([d for d in state["instances"] if d.get("pid")])

        def all_up() -> bool:
            try:
                return (prom.value("count(up == 1)") or 0) >= expected
            except PrometheusError:
                return False

        if not all_up():
            progress(f"waiting for Prometheus to scrape all {expected} targets")
            wait_until(all_up, timeout, "Prometheus scraping every target")

    def _migrate_and_seed(self, state: dict[str, Any], progress: Progress) -> None:
        env = {**os.environ, "PORTAL_DATABASE_URL": state["migrate_url"]}
        cwd = Path(__file__).resolve().parents[2]
        for argv, what in (
            ([python(), "-m", "app", "migrate", "--phase", "expand"], "migrating"),
            ([python(), "-m", "app", "seed", "--users", str(SEED_USERS)], "seeding"),
        ):
            if what == "seeding" and state.get("seeded"):
                continue
            progress(f"{what} the database")
            result = subprocess.run(
                argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
            )
            if result.returncode != 0:
                raise ServerError(
                    f"{' '.join(argv[1:])} failed: "
                    f"{(result.stderr or result.stdout).strip()[-500:]}"
                )
        state["seeded"] = True
        self.save(state)

    def down(self, progress: Progress = print) -> None:
        """Stop everything the state file names (works after a crash too)."""
        try:
            state = self.load()
        except ServerError:
            progress(f"no local stack in {self.root}")
            return
        for inst in self.instances(state):
            self.stop_instance(inst)
        for name in ("prometheus", "nginx", "pushgateway"):
            Process(name, self.root / name, []).stop()
        alerting.stop(self.root)
        for kind in ("postgres", "redis"):
            Process(f"{kind}-exporter", self.root / "exporters", []).stop()
        self.redis(state).stop()
        pg = self.postgres(state)
        if pg.running():
            pg.stop()
        state["instances"] = [{**d, "pid": None} for d in state["instances"]]
        self.save(state)
        progress("local stack stopped")


def nginx_config(state: dict[str, Any]) -> str:
    """nginx in front of the instances: canary instances get ``weight`` percent of requests."""
    weight = int(state.get("weight", 0))
    live = [d for d in state["instances"] if d.get("pid")]
    stable = [d for d in live if d["track"] == "stable"]
    canary = [d for d in live if d["track"] == "canary"]
    servers: list[str] = []
    # nginx weights are per server; spread each track's share over its instances (x100 scale).
    share = {"stable": 100 - weight if canary else 100, "canary": weight if stable else 100}
    for group in (stable, canary):
        for d in group:
            w = share[d["track"]] * 100 // max(1, len(group))
            if w > 0:
                servers.append(f"    server 127.0.0.1:{d['port']} weight={w} max_fails=0;")
    if not servers:
        servers.append("    server 127.0.0.1:1 down;")
    upstream = "\n".join(servers)
    return f"""worker_processes 1;
pid nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
  upstream portal {{
{upstream}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{state["ports"]["nginx"]};
    # like the cluster's Ingress: the business routes only (/metrics and the docs stay private)
    location / {{ return 404; }}
    location /api/ {{
      proxy_pass http://portal;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # like ingress-nginx: a connection refused by a stopping instance is retried on another
      # (never for non-idempotent requests, never for an HTTP error the app answered)
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
"""
