"""A steady, realistic load on the local stack while a drill runs.

Open loop at ``rate_per_s``: dashboards of Zipf-distributed users (a few users are hot, as in a
real portal), user-list pages, plans, and a small share of profile updates. Every request carries
a bearer token, as any client's: a user's own for their dashboard, plans and updates, an admin's
for the user list and the statistics. Counts what it sent and what failed, so a drill can say
how much traffic each release saw.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from rollout.local.credentials import Credentials


@dataclass
class LoadCounts:
    sent: int = 0
    errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (k**s) for k in range(1, n + 1)]


class LoadGenerator:
    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        rate_per_s: float = 40.0,
        users: int = 2000,
        workers: int = 8,
        write_share: float = 0.02,
        seed: int = 7,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.rate = rate_per_s
        self.credentials = credentials
        users = min(users, len(credentials.users))
        self.users = users
        self.workers = workers
        self.write_share = write_share
        self.counts = LoadCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(seed)
        self._weights = zipf_weights(users)
        self._user_ids = list(range(1, users + 1))

    def _request(self) -> tuple[str, str, bytes | None, str]:
        """Method, path, body and the bearer token of the next request."""
        with self._lock:
            r = self._rng.random()
            user = self._rng.choices(self._user_ids, self._weights)[0]
            page = self._rng.randint(1, 20)
        own, admin = self.credentials.user(user), self.credentials.admin
        if r < self.write_share:
            return "PATCH", f"/api/users/{user}", b'{"name": "Member %d"}' % user, own
        if r < 0.75:
            return "GET", f"/api/users/{user}/dashboard", None, own
        if r < 0.9:
            return "GET", f"/api/users?page={page}&per_page=20", None, admin
        if r < 0.97:
            return "GET", "/api/plans", None, own
        return "GET", "/api/admin/stats", None, admin

    def _worker(self, index: int) -> None:
        interval = self.workers / self.rate
        next_at = time.monotonic() + interval * index / self.workers
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += interval
            method, path, body, token = self._request()
            status = 0
            for attempt in range(2):
                # A kept-alive connection that nginx closed on a reload fails at once; like
                # any HTTP client library, retry that once on a fresh connection.
                reused = conn is not None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                    headers = {"Authorization": f"Bearer {token}"}
                    if body:
                        headers["Content-Type"] = "application/json"
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    if not reused or attempt:
                        break
            with self._lock:
                self.counts.sent += 1
                self.counts.by_status[status] = self.counts.by_status.get(status, 0) + 1
                if status == 0 or status >= 500:
                    self.counts.errors += 1
        if conn is not None:
            conn.close()

    def start(self) -> LoadGenerator:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"load-{i}")
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadCounts:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        return self.counts

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
