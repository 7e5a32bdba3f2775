"""The ledger never loses or doubles a transition: compare-and-swap, lease, atomic writes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from rollout.ledger import FileLedgerStore, Ledger, lease_live
from rollout.target import ConflictError


def test_a_stale_token_is_refused(tmp_path):
    store = FileLedgerStore(tmp_path / "ledger.json")
    token = store.save({"releases": []}, None)
    store.save({"releases": [1]}, token)
    with pytest.raises(ConflictError):
        store.save({"releases": [2]}, token)
    doc, _ = store.load()
    assert doc["releases"] == [1]


def test_creating_twice_is_refused(tmp_path):
    store = FileLedgerStore(tmp_path / "ledger.json")
    store.save({}, None)
    with pytest.raises(ConflictError):
        store.save({}, None)


def _take(path: str, holder: str, results) -> None:
    ledger = Ledger(FileLedgerStore(Path(path)), "s", "local")

    def take(doc):
        if lease_live(doc, 1e12 - 10):
            return False
        doc["lease"] = {"holder": holder, "expires_at": 1e12}
        return True

    results.put((holder, ledger.update(take)))


def test_of_many_processes_racing_for_the_lease_exactly_one_wins(tmp_path):
    path = str(tmp_path / "ledger.json")
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_take, args=(path, f"h{i}", results)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    won = [h for h, ok in (results.get(timeout=5) for _ in procs) if ok]
    assert len(won) == 1
    assert json.loads(Path(path).read_text())["lease"]["holder"] == won[0]


def test_every_update_is_kept_under_concurrent_writers(tmp_path):
    path = str(tmp_path / "ledger.json")

    procs = [multiprocessing.Process(target=_append, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    doc = json.loads(Path(path).read_text())
    assert sorted(doc["releases"]) == sorted(f"{i}-{n}" for i in range(4) for n in range(25))


def _append(path: str, i: int) -> None:
    ledger = Ledger(FileLedgerStore(Path(path)), "s", "local")
    for n in range(25):
        ledger.update(lambda d, n=n: d["releases"].append(f"{i}-{n}"))


def test_a_corrupt_ledger_is_reported_with_its_path(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match=str(path)):
        Ledger(FileLedgerStore(path)).read()


def test_incident_actions_are_appended_to_the_release(tmp_path):
    ledger = Ledger(FileLedgerStore(tmp_path / "l.json"), "s", "local")
    ledger.update(lambda d: d["releases"].append({"id": "r1", "version": "2", "incident": None}))
    ledger.add_incident_action("r1", "flush-cache", "user:* (12 keys)", "dave")
    incident = ledger.find("r1")["incident"]
    assert incident["actions"][0]["action"] == "flush-cache"
    assert incident["actions"][0]["by"] == "dave"
