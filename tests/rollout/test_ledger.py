"""The ledger never loses or doubles a transition: compare-and-swap, lease, atomic writes; it is
typed, versioned, and reads the documents of its first schema."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
from pathlib import Path

import pytest

from rollout.ledger import (
    SCHEMA_VERSION,
    Action,
    FileLedgerStore,
    Incident,
    Lease,
    Ledger,
    LedgerDoc,
    LedgerError,
    ReleaseStatus,
    TransitionState,
)
from rollout.ledger.model import ContractMigration
from rollout.ports import ConflictError
from tests import ledger_writes

V1 = Path(__file__).with_name("data") / "ledger-v1.json"
"""A ledger written by the code of the first schema: a promoted and an aborted release (with a
fault switch in its record, an incident and a runbook's action), a contract migration, a
scripted rollback and a runbook run that concerned no release."""


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

    def take(doc: LedgerDoc) -> bool:
        if doc.lease_live(1e12 - 10):
            return False
        doc.lease = Lease(holder=holder, expires_at=1e12)
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


def _append(path: str, i: int) -> None:
    ledger = Ledger(FileLedgerStore(Path(path)), "s", "local")
    for n in range(12):  # 48 in all: within the incidents the ledger keeps
        incident = Incident(id=f"{i}-{n}", opened_at=0.0, reason="race")
        ledger.update(lambda d, inc=incident: d.incidents.append(inc))


def test_every_update_is_kept_under_concurrent_writers(tmp_path):
    path = str(tmp_path / "ledger.json")
    procs = [multiprocessing.Process(target=_append, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    doc = json.loads(Path(path).read_text())
    ids = sorted(inc["id"] for inc in doc["incidents"])
    assert ids == sorted(f"{i}-{n}" for i in range(4) for n in range(12))


def test_a_corrupt_ledger_is_reported_with_its_path(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match=str(path)):
        Ledger(FileLedgerStore(path)).read()


def test_incident_actions_are_appended_to_the_release(tmp_path):
    path = tmp_path / "l.json"
    shutil.copy(V1, path)
    ledger = Ledger(FileLedgerStore(path), "staging", "local")
    promoted = ledger.read().releases[0]
    assert promoted.incident is None
    ledger.add_incident_action(promoted.id, "flush_cache", "user:* (12 keys)", "dave")
    incident = ledger.find(promoted.id).incident
    assert incident.reason == "opened by an operator" and incident.opened_by == "dave"
    assert [(a.action, a.by) for a in incident.actions] == [("flush_cache", "dave")]


def test_a_ledger_of_the_first_schema_is_read_and_written_back_in_the_current_one(tmp_path):
    path = tmp_path / "ledger.json"
    shutil.copy(V1, path)
    ledger = Ledger(FileLedgerStore(path), "staging", "kubernetes:portal-staging")
    doc = ledger.read()
    promoted, aborted = doc.releases
    assert promoted.status is ReleaseStatus.PROMOTED and aborted.status is ReleaseStatus.ABORTED
    assert [t.action for t in promoted.transitions] == [
        Action.MIGRATE_EXPAND,
        Action.DEPLOY_CANARY,
        Action.SET_WEIGHT,
        Action.SET_WEIGHT,
        Action.PROMOTE,
    ]
    assert all(t.state is TransitionState.DONE for t in promoted.transitions)
    assert [t.args.weight for t in promoted.transitions if t.action is Action.SET_WEIGHT] == [
        50,
        100,
    ]
    incident = aborted.incident
    assert incident.id == aborted.id and incident.gate == "metrics"
    assert incident.check == "error_rate" and incident.values["canary"] == pytest.approx(0.3)
    assert incident.actions[0].by == "runbook release-aborted: oncall"
    (run,) = doc.incidents
    assert run.runbook == "redis-down" and run.opened_by == "oncall"
    assert run.findings[0].level == "critical"
    assert doc.rollbacks[0].from_.version == "2.0.0" and doc.rollbacks[0].to.version == "1.0.0"
    assert doc.contract_migrations[0].applied == ["0003_drop_users_username"]
    assert [s.version for s in doc.stable_history] == ["1.0.0", "2.0.0", "1.0.0"]

    ledger.update(lambda d: None)  # any write stores the current schema
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and "version" not in raw
    assert "env" not in raw["releases"][1]  # the drill's fault switch is not a release's field
    assert raw["rollbacks"][0]["from"]["version"] == "2.0.0"
    after = ledger.read()
    assert after.model_copy(update={"releases": []}) == doc.model_copy(update={"releases": []})
    # the older release left the document for its archive, and is found there whole
    assert [r.summarized for r in after.releases] == [True, False]
    assert [ledger.find(r.id) for r in doc.releases] == doc.releases


def test_statuses_and_actions_outside_the_enums_are_refused(tmp_path):
    path = tmp_path / "ledger.json"
    doc = json.loads(V1.read_text())
    doc["releases"][0]["status"] = "PROMOTE"
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="PROMOTE"):
        Ledger(FileLedgerStore(path)).read()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object, found an array"),
        ('{"_revision": "seven"}', "_revision 'seven' is not a revision number"),
        ('{"schema_version": 3, "releases": 5}', "releases: Input should be a valid list"),
        ('{"schema_version": 3, "lease": {"holder": "x"}}', "lease.expires_at: Field required"),
        ('{"schema_version": 9}', "written by a newer portalctl (schema 9)"),
    ],
)
def test_a_ledger_of_the_wrong_shape_is_refused_in_one_line_and_left_as_it_was(
    tmp_path, content, message
):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    ledger = Ledger(FileLedgerStore(path), "s", "local")
    for attempt in (ledger.read, lambda: ledger.update(lambda d: None)):
        with pytest.raises(LedgerError) as info:
            attempt()
        text = str(info.value)
        assert "\n" not in text and text.startswith(f"ledger {path}: ")
        assert message in text
    assert path.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB filesystem of its own (tmpfs): the disk under the ledger fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_refuses_the_write_and_keeps_the_last_document_whole(small_disk):
    path = small_disk / "ledger.json"
    ledger = Ledger(FileLedgerStore(path), "s", "local")
    ledger.update(lambda d: d.incidents.append(Incident(id="kept", opened_at=0.0, reason="r")))
    kept = path.read_text()

    def grow(doc: LedgerDoc) -> None:
        for n in range(100):
            applied = [f"{n:04d}_{'x' * 60}_{m}" for m in range(20)]
            doc.contract_migrations.append(
                ContractMigration(release_id="r", version="v", at=0.0, applied=applied, by="b")
            )

    with pytest.raises(LedgerError) as info:
        ledger.update(grow)
    text = str(info.value)
    assert "\n" not in text and f"ledger {path}: cannot be written" in text
    assert "No space left on device" in text
    assert path.read_text() == kept  # the old document, whole
    assert [i.id for i in ledger.read().incidents] == ["kept"]
    assert sorted(p.name for p in small_disk.iterdir()) == ["ledger.json", "ledger.json.lock"]


def test_a_finished_release_leaves_the_document_for_its_archive_and_is_found_there(tmp_path):
    ledger = Ledger(FileLedgerStore(tmp_path / "ledger.json"), "s", "local")
    for n in range(1, 4):
        ledger_writes.release(ledger, n, 8, aborted=n == 2, start=1e9 + 3600 * n)
    doc = ledger.read()
    assert [r.summarized for r in doc.releases] == [True, True, False]
    first = doc.releases[0]
    assert first.samples == [] and first.transitions == [] and first.status == "PROMOTED"
    assert doc.releases[1].incident.gate == "metrics"  # a summary keeps the incident
    whole = ledger.find(first.id)
    assert whole.transitions and len(whole.samples) == 8
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == [
        f"{r.id}.json" for r in doc.releases[:2]
    ]
