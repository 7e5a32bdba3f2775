"""What the container images of our stacks mean on this machine: the program each one runs.

No container engine runs here, so an image is a recipe over the host's installed programs: its
entrypoint and default command, working directory and environment (as its Dockerfile declares
them), and the files it adds to the filesystem its process sees (the app's source at
``/srv/portal/app``, as ``app/Dockerfile`` puts it). The runtime (``runtime.py``) starts the
program in the pod's network namespace, in a root filesystem made of the host's ``/usr`` and
``/etc`` (read-only), these files and the pod's volumes at their mount paths, so paths in a
container's args and config files mean what they mean in the cluster.

``Images.portal(tag, ...)`` registers a build of the app: another source tree (a version with a
migration of its own) or environment baked in (a release with a fault), as a faulty image would
be in a registry.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POSTGRES_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))


@dataclass(frozen=True)
class Image:
    """A container image: how its process runs here."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    workdir: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)
    """Paths in the container's filesystem -> what the host holds for them (read-only)."""
    user: str | None = None
    """The account the program must run as, whatever the pod asks (Postgres refuses root and
    needs an account in /etc/passwd: the host's ``postgres``); None: the pod's ``runAsUser``."""


def repository(ref: str) -> str:
    """``ghcr.io/acme/portal:1.0.0`` -> ``ghcr.io/acme/portal`` (a digest is dropped too)."""
    name = ref.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


class Images:
    """The images the runtime can run: exact references first, then by repository."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Image] = {}
        self._by_repo: dict[str, Image] = {}

    def add(self, ref: str, image: Image) -> None:
        """``ref`` with a tag registers that exact image; without one, every tag of it."""
        if repository(ref) == ref:
            self._by_repo[ref] = image
        else:
            self._by_ref[ref] = image

    def get(self, ref: str) -> Image | None:
        return self._by_ref.get(ref) or self._by_repo.get(repository(ref))

    @property
    def repositories(self) -> list[str]:
        return sorted({*self._by_repo, *(repository(r) for r in self._by_ref)})

    def portal(
        self,
        ref: str,
        env: Mapping[str, str] | None = None,
        migrations: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> str:
        """Register a build of the app as ``ref``: its Dockerfile's environment plus ``env``,
        and, with ``migrations`` (file name -> SQL), a source tree that ships them beside the
        repository's own (written under ``workdir``). Returns ``ref``."""
        source = REPO / "app"
        if migrations:
            if workdir is None:
                raise ValueError("a build with migrations of its own needs a workdir")
            source = workdir / ref.replace("/", "_").replace(":", "_") / "app"
            shutil.rmtree(source.parent, ignore_errors=True)
            shutil.copytree(REPO / "app", source, ignore=shutil.ignore_patterns("__pycache__"))
            for name, sql in migrations.items():
                (source / "migrations" / name).write_text(sql)
        self.add(ref, portal_image(source, env or {}))
        return ref


def portal_image(source: Path, env: Mapping[str, str]) -> Image:
    """``app/Dockerfile``: python -m app, serve :8000 by default, the code at /srv/portal/app;
    ``python`` is this repository's virtualenv (the image's pinned dependency set)."""
    return Image(
        entrypoint=("python", "-m", "app"),
        cmd=("serve", "--host", "0.0.0.0", "--port", "8000"),  # noqa: S104 - the pod's own namespace
        workdir="/srv/portal",
        env={
            "PATH": f"{VENV_BIN}:{SYSTEM_PATH}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        files={"/srv/portal/app": source},
    )


def default_images(app_repository: str, prometheus: Path) -> Images:
    """Every image the staging and prod stacks use that has a program on this machine: the app,
    Postgres and Redis with their exporters (Debian's), the Pushgateway and Alertmanager
    (Debian's), and Prometheus: ``prometheus`` is the binary of the pinned release built from Go
    modules (``scripts/cluster.py build``), since Debian's has no Kubernetes service discovery.
    Grafana, Jaeger and kube-state-metrics have none; their pods stay kwok's (ready, nothing
    behind)."""
    images = Images()
    images.add(app_repository, portal_image(REPO / "app", {}))
    images.add(
        "postgres",
        Image(
            entrypoint=("/docker-entrypoint.sh",),
            cmd=("postgres",),
            env={"PATH": f"{POSTGRES_BIN}:{SYSTEM_PATH}", "PGDATA": "/var/lib/postgresql/data"},
            files={"/docker-entrypoint.sh": HERE / "postgres-entrypoint.sh"},
            user="postgres",
        ),
    )
    images.add("redis", Image(entrypoint=("redis-server",), env={"PATH": SYSTEM_PATH}))
    images.add(
        "quay.io/prometheuscommunity/postgres-exporter",
        Image(entrypoint=("/usr/bin/prometheus-postgres-exporter",)),
    )
    images.add(
        "oliver006/redis_exporter", Image(entrypoint=("/usr/bin/prometheus-redis-exporter",))
    )
    images.add(
        "prom/prometheus",
        Image(
            entrypoint=("/opt/prometheus/prometheus",),
            cmd=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"),
            workdir="/prometheus",
            files={"/opt/prometheus/prometheus": prometheus},
        ),
    )
    images.add("prom/pushgateway", Image(entrypoint=("/usr/bin/prometheus-pushgateway",)))
    images.add(
        "prom/alertmanager",
        Image(entrypoint=("/usr/bin/prometheus-alertmanager",), workdir="/alertmanager"),
    )
    return images
