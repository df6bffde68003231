"""Tests of the local backend's durable store (``atai_magics.local.store``)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from atai_magics.api import models as m
from atai_magics.local import _ids
from atai_magics.local.store import (
    SCHEMA_VERSION,
    UPLOAD_TTL,
    FileExists,
    InvalidFileId,
    InvalidRequest,
    NotFound,
    StaleAttempt,
    StateConflict,
    Store,
    StoreError,
    UnresolvedInputs,
    UploadNotFound,
    format_ts,
    validate_file_id,
)

STATUSES = ("PENDING", "ADMITTED", "RUNNING", "COMPLETED", "FAILED", "PREEMPTED", "CANCELLED")
# The state machine as the brief states it (written out here, not imported from the store).
LEGAL = {
    ("PENDING", "ADMITTED"),
    ("PENDING", "CANCELLED"),
    ("ADMITTED", "RUNNING"),
    ("ADMITTED", "FAILED"),
    ("ADMITTED", "PREEMPTED"),
    ("ADMITTED", "CANCELLED"),
    ("RUNNING", "COMPLETED"),
    ("RUNNING", "FAILED"),
    ("RUNNING", "PREEMPTED"),
    ("RUNNING", "CANCELLED"),
    ("PREEMPTED", "PENDING"),
    ("PREEMPTED", "CANCELLED"),
    ("FAILED", "PENDING"),
    ("CANCELLED", "PENDING"),
}
PATHS = {
    "PENDING": [],
    "ADMITTED": ["ADMITTED"],
    "RUNNING": ["ADMITTED", "RUNNING"],
    "COMPLETED": ["ADMITTED", "RUNNING", "COMPLETED"],
    "FAILED": ["ADMITTED", "RUNNING", "FAILED"],
    "PREEMPTED": ["ADMITTED", "RUNNING", "PREEMPTED"],
    "CANCELLED": ["CANCELLED"],
}
PORTS = {"worker.inference": {"tracked": True}, "worker.n_shots": {"tracked": False}}
CSV = b"timestamp,a,b\n1,0.5,0.7\n2,0.6,0.8\n3,0.1,0.2\n"
JSON = dict[str, Any]


class Clock:
    """A settable clock: every call advances one millisecond, so timestamps are distinct."""

    def __init__(self) -> None:
        self.now = datetime(2026, 4, 14, 10, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store(tmp_path / "home", clock=clock) as s:
        s.add_file("inf.csv", "text/csv", CSV)
        s.add_file("shot_a.csv", "text/csv", CSV)
        s.add_file("shot_b.csv", "text/csv", CSV)
        yield s


def request(name: str = "job", n_inputs: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "pipeline_type": "batch",
        "pipeline_key": "machine-state-classification",
        "inputs": {
            "worker.inference": [{"file_id": "inf.csv"} for _ in range(n_inputs)],
            "worker.n_shots": [
                {"file_id": "shot_a.csv", "metadata": {"class": "a"}},
                {"file_id": "shot_b.csv", "metadata": {"class": "b"}},
            ],
        },
        "parameters": {"worker": {"parallelism": 1, "config": {"batch_size": 8}}},
        **extra,
    }


def new_job(store: Store, status: str = "PENDING", **kw: Any) -> str:
    job_id: str = store.create_job(request(**kw), "1.1.0", PORTS)["id"]
    for step in PATHS[status]:
        store.transition(job_id, step)
    return job_id


def tracked_inputs(store: Store, job_id: str) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = store.list_inputs(job_id, port_name="worker.inference")["inputs"]
    return inputs


# --- ids and timestamps ---------------------------------------------------------------------


def test_ids_are_typeid_shaped_and_time_sortable() -> None:
    ids = [_ids.new_id("job", 1_700_000_000_000) for _ in range(1000)]
    assert all(_ids.is_id(i, "job") for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    later = _ids.new_id("job", 1_700_000_000_000 + 10_000)
    assert later > ids[-1]
    for prefix in ("job", "inp", "out", "fil", "upl", "ppl", "cmp", "org"):
        value = _ids.new_id(prefix)
        assert value.startswith(prefix + "_") and len(value) == len(prefix) + 27
        assert value == value.lower()
    with pytest.raises(ValueError):
        _ids.new_id("xyz")
    assert not _ids.is_id("job_../../etc", "job")
    assert _ids.encode_base32(0) == "0" * 26
    assert _ids.encode_base32((1 << 128) - 1) == "7" + "z" * 25
    uid = _ids.error_uid()
    assert uid.startswith("err-") and len(uid) == 40


def test_timestamps_are_rfc3339_with_microseconds(store: Store, clock: Clock) -> None:
    job = store.get_job(new_job(store))
    assert job["created_at"].endswith("Z") and len(job["created_at"]) == 27
    assert format_ts(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"
    assert job["created_at"] > "2026-04-14T10:00:00.000000Z"


# --- schema ---------------------------------------------------------------------------------


def test_schema_version_and_pragmas(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with Store(home) as s, s._tx(write=False) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        org = s.org_id
        assert _ids.is_id(org, "org")
    with Store(home) as s:  # reopening migrates nothing and keeps the org
        assert s.org_id == org
    raw = sqlite3.connect(home / "state.sqlite3")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer version"):
        Store(home)


# --- jobs -----------------------------------------------------------------------------------


def test_create_and_get_job(store: Store) -> None:
    created = store.create_job(request("tep-classification"), "1.1.1", PORTS)
    assert set(created) == set(m.JobRecord.model_fields) - {"input_progress"} | {"input_progress"}
    assert len(created) == 20
    assert created["status"] == "PENDING" and created["input_progress"] is None
    assert created["retry_count"] == 0 and created["preemption_count"] == 0
    assert created["org_id"] == store.org_id and created["pipeline_version"] == "1.1.1"
    assert created["parameters"] == request()["parameters"]
    assert created["queue_position"] == 1 and created["queue_depth"] == 1
    for key in ("started_at", "completed_at", "failed_at", "cancelled_at", "error"):
        assert created[key] is None
    m.JobRecord.model_validate(created)

    job = store.get_job(created["id"])
    assert len(job) == 20
    assert job["input_progress"] == {"pending": 2, "processing": 0, "completed": 0, "failed": 0}
    record = m.JobRecord.model_validate(job)
    assert record.input_progress is not None and record.input_progress.total == 2
    with pytest.raises(NotFound):
        store.get_job("job_00000000000000000000000000")


def test_create_job_inputs(store: Store) -> None:
    job_id = new_job(store)
    inputs = store.list_inputs(job_id, limit=None)
    m.InputList.model_validate(inputs)
    assert inputs["total"] == 4
    by_port: dict[str, list[dict[str, Any]]] = {}
    for item in inputs["inputs"]:
        by_port.setdefault(item["port_name"], []).append(item)
        m.JobInput.model_validate(item)
        assert _ids.is_id(item["id"], "inp")
    assert [i["status"] for i in by_port["worker.inference"]] == ["pending", "pending"]
    assert [i["status"] for i in by_port["worker.n_shots"]] == ["reference", "reference"]
    shot = by_port["worker.n_shots"][0]
    assert shot["file_id"] == "shot_a.csv"
    assert shot["data"] == {
        "ref": "/v0.5/files/download/shot_a.csv",
        "filename": "shot_a.csv",
        "file_type": "text/csv",
        "file_extension": ".csv",
        "num_bytes": len(CSV),
        "metadata": {"class": "a"},
        "file_tags": None,
        "file_attributes": {
            "num_rows": 3,
            "num_columns": 3,
            "column_headers": ["timestamp", "a", "b"],
        },
    }
    assert store.list_inputs(job_id, port_name="worker.n_shots")["total"] == 2
    assert store.list_inputs(job_id, status="pending")["total"] == 2
    page = store.list_inputs(job_id, offset=1, limit=2)
    assert [i["id"] for i in page["inputs"]] == [i["id"] for i in inputs["inputs"][1:3]]


def test_create_job_checkpoint_input_and_unknown_port(store: Store) -> None:
    req = request()
    req["inputs"]["worker.fine_tune_checkpoint"] = [
        {"kind": "checkpoint", "checkpoint_id": "ckp_5kn596dy9v8wztr2fcqyhvrsa0"}
    ]
    job_id = store.create_job(req, "1.1.0", PORTS)["id"]
    (ckp,) = store.list_inputs(job_id, port_name="worker.fine_tune_checkpoint")["inputs"]
    assert ckp["checkpoint_id"] == "ckp_5kn596dy9v8wztr2fcqyhvrsa0" and ckp["data"] is None
    assert ckp["status"] == "pending"  # ports the pipeline does not declare count as tracked
    m.JobInput.model_validate(ckp)


def test_create_job_unresolved_files_write_nothing(store: Store) -> None:
    req = request()
    req["inputs"]["worker.inference"].append({"file_id": "missing.csv"})
    with pytest.raises(UnresolvedInputs, match=r"Failed to resolve file inputs: missing\.csv"):
        store.create_job(req, "1.1.0", PORTS)
    assert store.list_jobs()["total"] == 0
    with store._tx(write=False) as conn:
        assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 0
    with pytest.raises(InvalidRequest):
        store.create_job({"name": "x"}, None, PORTS)


def test_create_job_from_model(store: Store) -> None:
    job = store.create_job(m.JobRequest.model_validate(request("model")), "1", PORTS)
    assert job["name"] == "model" and store.list_inputs(job["id"])["total"] == 4


def test_create_job_with_file_lookup(store: Store) -> None:
    seen: list[str] = []

    def lookup(file_id: str) -> dict[str, Any] | None:
        seen.append(file_id)
        return {"file_id": file_id, "file_type": "text/csv", "num_bytes": 7}

    req = request()
    req["inputs"] = {"worker.inference": [{"file_id": "elsewhere.csv"}]}
    job_id = store.create_job(req, None, PORTS, file_lookup=lookup)["id"]
    assert seen == ["elsewhere.csv"]
    assert store.list_inputs(job_id)["inputs"][0]["data"]["num_bytes"] == 7


@pytest.mark.parametrize("source", STATUSES)
@pytest.mark.parametrize("target", STATUSES)
def test_state_machine_table(store: Store, source: str, target: str) -> None:
    job_id = new_job(store, source)
    assert store.get_job(job_id)["status"] == source
    if (source, target) in LEGAL:
        job = store.transition(job_id, target)
        assert job["status"] == target
        m.JobRecord.model_validate(job)
    else:
        before = store.get_job(job_id)
        with pytest.raises(StateConflict, match=f"Job {job_id} is {source}"):
            store.transition(job_id, target)
        assert store.get_job(job_id) == before


def test_transition_timestamps_and_counters(store: Store, clock: Clock) -> None:
    job_id = new_job(store)
    created = store.get_job(job_id)
    clock.advance(5)
    store.transition(job_id, "ADMITTED")
    admitted = store.get_job(job_id)
    assert admitted["started_at"] is None and admitted["updated_at"] > created["updated_at"]
    assert admitted["queue_position"] is None and admitted["queue_depth"] is None
    store.transition(job_id, "RUNNING")
    started = store.get_job(job_id)["started_at"]
    assert started is not None
    store.transition(job_id, "PREEMPTED")
    assert store.get_job(job_id)["preemption_count"] == 1
    store.transition(job_id, "PENDING")
    store.transition(job_id, "ADMITTED")
    store.transition(job_id, "RUNNING")
    assert store.get_job(job_id)["started_at"] == started  # only the first RUNNING sets it
    failed = store.transition(job_id, "FAILED", error={"message": "boom"})
    assert failed["failed_at"] is not None and failed["error"] == {"message": "boom"}
    assert failed["completed_at"] is None and failed["cancelled_at"] is None

    retried = store.retry(job_id)
    m.RetryResult.model_validate(retried)
    assert retried == {"id": job_id, "status": "PENDING", "retry_count": 1}
    job = store.get_job(job_id)
    for key in ("started_at", "completed_at", "failed_at", "cancelled_at", "error"):
        assert job[key] is None
    assert job["preemption_count"] == 1

    cancelled = store.cancel(job_id)
    m.CancelResult.model_validate(cancelled)
    assert cancelled["status"] == "CANCELLED" and cancelled["cancelled_at"] is not None
    job = store.get_job(job_id)
    assert [job[k] is not None for k in ("completed_at", "failed_at", "cancelled_at")] == [
        False,
        False,
        True,
    ]

    done = new_job(store, "COMPLETED")
    job = store.get_job(done)
    assert job["completed_at"] is not None and job["failed_at"] is None
    msg = (
        f"Job {done} is COMPLETED; "
        "only PENDING, ADMITTED, RUNNING or PREEMPTED jobs can be cancelled"
    )
    with pytest.raises(StateConflict) as info:
        store.cancel(done)
    assert str(info.value) == msg and info.value.status == 409
    with pytest.raises(StateConflict, match="only FAILED or CANCELLED jobs can be retried"):
        store.retry(done)
    with pytest.raises(InvalidRequest):
        store.transition(done, "EXPLODED")


def test_retry_resets_inputs_keeps_history(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    first, second = tracked_inputs(store, job_id)
    store.set_input_status(first["id"], "processing")
    store.set_input_status(first["id"], "completed")
    store.set_input_status(second["id"], "failed", "bad file")
    store.add_event(job_id, "INFO", "info", "hello")
    store.add_progress(job_id, "inference", 1, "p", {"success": 1})
    store.add_output(job_id, "worker.results", "pred.csv", b"x\n")
    store.transition(job_id, "FAILED", error="worker crashed")
    assert store.get_job(job_id)["error"] == "worker crashed"
    store.retry(job_id)
    for item in tracked_inputs(store, job_id):
        assert item["status"] == "pending"
        assert item["completed_at"] is None and item["error_message"] is None
    shots = store.list_inputs(job_id, port_name="worker.n_shots")["inputs"]
    assert {i["status"] for i in shots} == {"reference"}
    assert store.list_outputs(job_id)["total"] == 1
    assert store.list_progress(job_id)["total"] == 1
    types = [e["event_type"] for e in store.list_events(job_id)["events"]]
    assert types == ["info", "job.retried"]


def test_preemption_requeues_processing_inputs(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    first, _ = tracked_inputs(store, job_id)
    store.set_input_status(first["id"], "processing")
    store.transition(job_id, "PREEMPTED", event=("WARN", "job.preempted", "evicted"))
    assert store.get_input(first["id"])["status"] == "pending"
    assert store.list_events(job_id, level="WARN")["events"][0]["message"] == "evicted"


def test_queue_positions(store: Store) -> None:
    a, b, c = (new_job(store, name=n) for n in "abc")
    t1 = store.create_job(request("t1", pipeline_type="training"), "1", PORTS)
    assert (t1["queue_position"], t1["queue_depth"]) == (1, 1)
    t2 = new_job(store, name="t2", pipeline_type="training")

    def pos(job_id: str) -> tuple[int | None, int | None]:
        job = store.get_job(job_id)
        return job["queue_position"], job["queue_depth"]

    assert [pos(j) for j in (a, b, c)] == [(1, 3), (2, 3), (3, 3)]
    assert pos(t2) == (2, 2)
    store.transition(a, "ADMITTED")
    assert [pos(j) for j in (a, b, c)] == [(None, None), (1, 2), (2, 2)]
    store.transition(a, "RUNNING")
    store.transition(a, "PREEMPTED")  # keeps its place: ahead of b and c
    assert [pos(j) for j in (a, b, c)] == [(1, 3), (2, 3), (3, 3)]
    store.transition(a, "PENDING")
    assert pos(a) == (1, 3)
    store.cancel(b)
    assert [pos(j) for j in (a, b, c)] == [(1, 2), (None, None), (2, 2)]
    store.retry(b)  # a retried job goes to the back
    assert [pos(j) for j in (a, b, c)] == [(1, 3), (3, 3), (2, 3)]
    listed = {j["id"]: (j["queue_position"], j["queue_depth"]) for j in store.list_jobs()["jobs"]}
    assert listed[a] == (1, 3) and listed[b] == (3, 3) and listed[c] == (2, 3)
    assert listed[t2] == (2, 2)
    depths = store.queue_depths()
    m.QueueDepths.model_validate(depths)
    assert depths == {
        "queues": [
            {"pipeline_type": "batch", "depth": 3},
            {"pipeline_type": "training", "depth": 2},
        ]
    }
    store.delete_job(t2)
    assert store.queue_depths()["queues"][1] == {"pipeline_type": "training", "depth": 1}


def test_queue_positions_match_a_brute_force_count(store: Store) -> None:
    """Random walks over many jobs; positions must equal a direct count, page by page."""
    rng = random.Random(7)
    ids = [
        new_job(store, name=f"j{i}", pipeline_type=rng.choice(["batch", "training"]))
        for i in range(60)
    ]
    for job_id in ids:
        for step in rng.choice(
            [
                [],
                ["ADMITTED"],
                ["CANCELLED"],
                ["ADMITTED", "RUNNING", "PREEMPTED"],
                ["CANCELLED", "PENDING"],
            ]
        ):
            store.transition(job_id, step)
    with store._tx(write=False) as conn:
        for page_offset in (0, 10, 25, 50):
            for job in store.list_jobs(offset=page_offset, limit=10)["jobs"]:
                row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job["id"],)).fetchone()
                queued = "status IN ('PENDING','PREEMPTED') AND pipeline_type = ?"
                if row["status"] in ("PENDING", "PREEMPTED"):
                    expected_pos = conn.execute(
                        f"SELECT COUNT(*) FROM jobs WHERE {queued} AND queue_key <= ?",
                        (row["pipeline_type"], row["queue_key"]),
                    ).fetchone()[0]
                    depth = conn.execute(
                        f"SELECT COUNT(*) FROM jobs WHERE {queued}", (row["pipeline_type"],)
                    ).fetchone()[0]
                    assert (job["queue_position"], job["queue_depth"]) == (expected_pos, depth)
                else:
                    assert job["queue_position"] is None and job["queue_depth"] is None


def test_list_jobs_filters_and_order(store: Store) -> None:
    a = new_job(store, name="Volve-Drilling")
    b = new_job(store, "COMPLETED", name="ghost iot")
    c = new_job(store, "RUNNING", name="volve second", pipeline_type="training")
    page = store.list_jobs()
    m.JobList.model_validate(page)
    assert [j["id"] for j in page["jobs"]] == [c, b, a]
    assert page["total"] == 3 and page["offset"] == 0 and page["limit"] == 100
    assert [j["id"] for j in store.list_jobs(q="VOLVE")["jobs"]] == [c, a]
    assert [j["id"] for j in store.list_jobs(q="%")["jobs"]] == []
    assert [j["id"] for j in store.list_jobs(status="COMPLETED")["jobs"]] == [b]
    assert [j["id"] for j in store.list_jobs(pipeline_type="training")["jobs"]] == [c]
    paged = store.list_jobs(offset=1, limit=1)
    assert paged["total"] == 3 and [j["id"] for j in paged["jobs"]] == [b]
    assert all(j["input_progress"] is not None for j in page["jobs"])
    with pytest.raises(InvalidRequest):
        store.list_jobs(offset=-1)


def _expected_job(store: Store, job_id: str) -> JSON:
    """A job's listed fields computed directly from the rows (no store helper involved)."""
    with store._tx(write=False) as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        counts = dict.fromkeys(("pending", "processing", "completed", "failed"), 0)
        for status, n in conn.execute(
            "SELECT status, COUNT(*) FROM inputs WHERE job_id = ? GROUP BY status", (job_id,)
        ):
            if status in counts:
                counts[status] = n
        position = depth = None
        if row["status"] in ("PENDING", "PREEMPTED"):
            queued = "status IN ('PENDING','PREEMPTED') AND pipeline_type = ?"
            position, depth = conn.execute(
                f"SELECT SUM(queue_key <= ?), COUNT(*) FROM jobs WHERE {queued}",
                (row["queue_key"], row["pipeline_type"]),
            ).fetchone()
    fields: tuple[str, ...] = ("id", "org_id", "name", "pipeline_type", "pipeline_key")
    fields += ("pipeline_version",)
    fields += ("status", "retry_count", "preemption_count", "created_at", "updated_at")
    fields += ("started_at", "completed_at", "failed_at", "cancelled_at")
    expected: JSON = {key: row[key] for key in fields}
    expected["parameters"] = json.loads(row["parameters"])
    expected["error"] = None if row["error"] is None else json.loads(row["error"])
    expected.update(queue_position=position, queue_depth=depth, input_progress=counts)
    return expected


def test_list_jobs_json_is_the_page_the_models_read(store: Store) -> None:
    """The JSON text the route sends: valid per JobList, equal to the rows field by field
    (queue positions, input_progress, stored parameters and error), with awkward strings."""
    names = ['quote " back \\ slash', "tab\tnew\nline \x01 \x7f", "unicode é ✓ 日本 \u2028 😀"]
    ids = [new_job(store, name=n) for n in names]
    failed = new_job(store, "FAILED", name="failed")
    store.transition(ids[0], "ADMITTED")
    store.transition(ids[0], "RUNNING")
    inputs = tracked_inputs(store, ids[0])
    store.set_input_status(inputs[0]["id"], "completed")
    store.set_input_status(inputs[1]["id"], "processing")
    store.transition(ids[0], "PREEMPTED")  # processing -> pending, keeps its queue place
    odd_parameters = {"é": {"v": ["✓", 1.5, None, True, {"\\": '"'}]}, "a": {}}
    odd = request("params", parameters=odd_parameters)
    odd_id = store.create_job(odd, None, PORTS)["id"]
    text = store.list_jobs_json()
    page = m.JobList.model_validate_json(text)
    assert page.total == 5 and [j.id for j in page.jobs] == [odd_id, failed, *ids[::-1]]
    parsed = json.loads(text)
    assert parsed == store.list_jobs()
    for job in parsed["jobs"]:
        assert list(job) == list(m.JobRecord.model_fields)  # every field, in model order
        assert job == _expected_job(store, job["id"])
        assert job == store.get_job(job["id"])
    by_id = {j["id"]: j for j in parsed["jobs"]}
    assert [by_id[i]["name"] for i in ids] == names
    assert by_id[ids[0]]["input_progress"] == {
        "pending": 1,
        "processing": 0,
        "completed": 1,
        "failed": 0,
    }
    assert (by_id[ids[0]]["queue_position"], by_id[ids[0]]["queue_depth"]) == (1, 4)
    assert by_id[failed]["queue_position"] is None and by_id[failed]["error"] is None
    assert by_id[odd_id]["parameters"] == odd["parameters"]
    assert by_id[odd_id]["pipeline_version"] is None
    empty = json.loads(store.list_jobs_json(q="nothing", limit=None))
    assert empty == {"total": 0, "offset": 0, "limit": None, "jobs": []}


def test_job_parameters_must_be_json(store: Store) -> None:
    """NaN/Infinity are refused at creation: the stored text is sent as it is."""
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidRequest, match="NaN"):
            store.create_job(request(parameters={"x": bad}), "1", PORTS)
    assert store.list_jobs()["total"] == 0


def test_admit_next_when_full_takes_no_write_lock(store: Store) -> None:
    """The scheduler asks after every create; with no free slot the answer needs no writer."""
    running = new_job(store, "RUNNING")
    pending = new_job(store)
    hold = threading.Event()
    done = threading.Event()

    def writer() -> None:  # holds the store's write lock while admit_next runs
        with store._tx() as conn:
            conn.execute("UPDATE meta SET value = value WHERE key = 'org_id'")
            hold.set()
            done.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert hold.wait(10)
        started = time.monotonic()
        assert store.admit_next(1) is None  # would wait for the writer if it wrote
        assert time.monotonic() - started < 5
    finally:
        done.set()
        thread.join()
    admitted = store.admit_next(2)
    assert admitted is not None and admitted["id"] == pending and admitted["status"] == "ADMITTED"
    assert store.get_job(running)["status"] == "RUNNING"
    assert store.admit_next(5) is None  # nothing PENDING left


def _statements(store: Store, call: Callable[[], Any]) -> int:
    statements: list[str] = []
    with store._tx(write=False) as conn:
        conn.set_trace_callback(statements.append)
        try:
            call()
        finally:
            conn.set_trace_callback(None)
        return len(statements)


def _bulk_jobs(store: Store, n: int) -> None:
    """Many jobs in one transaction (create_job joins the outer transaction)."""
    rng = random.Random(n)
    with store._tx():
        for i in range(n):
            job_id = store.create_job(
                request(
                    f"bulk {i}",
                    n_inputs=rng.randint(1, 3),
                    pipeline_type=rng.choice(["batch", "training"]),
                ),
                "1",
                PORTS,
            )["id"]
            for step in PATHS[rng.choice(STATUSES)]:
                store.transition(job_id, step)
        for _ in range(5):  # the newest jobs stay queued, so the page needs positions
            store.create_job(request("queued"), "1", PORTS)


def test_list_jobs_query_count_is_constant(tmp_path: Path) -> None:
    """At 10,000 jobs a page costs the same number of SQL statements as at 10 jobs."""
    counts = {}
    for n in (10, 10_000):
        with Store(tmp_path / f"s{n}") as s:
            s.add_file("inf.csv", "text/csv", CSV)
            s.add_file("shot_a.csv", "text/csv", CSV)
            s.add_file("shot_b.csv", "text/csv", CSV)
            _bulk_jobs(s, n)
            page = s.list_jobs(limit=100)
            assert page["total"] == n + 5 and len(page["jobs"]) == min(100, n + 5)
            assert page["jobs"][0]["queue_position"] is not None
            m.JobList.model_validate(page)
            first_id = page["jobs"][0]["id"]
            counts[n] = (
                _statements(s, partial(s.list_jobs, limit=100)),
                _statements(s, partial(s.list_jobs, limit=100, offset=2, status="PENDING")),
                _statements(s, partial(s.get_job, first_id)),
            )
            assert sum(s.counts_by_status().values()) == n + 5
            with s._tx(write=False) as conn:
                real = dict(
                    conn.execute(
                        "SELECT pipeline_type, COUNT(*) FROM jobs "
                        "WHERE status IN ('PENDING','PREEMPTED') GROUP BY pipeline_type"
                    ).fetchall()
                )
                assert {q["pipeline_type"]: q["depth"] for q in s.queue_depths()["queues"]} == real
    assert counts[10] == counts[10_000]
    assert counts[10][0] <= 6


def test_counts_next_admissible_and_admit(store: Store) -> None:
    assert store.next_admissible(1) is None
    first = new_job(store)
    second = new_job(store)
    assert store.counts_by_status() == dict.fromkeys(STATUSES, 0) | {"PENDING": 2}
    nxt = store.next_admissible(1)
    assert nxt is not None and nxt["id"] == first
    admitted = store.admit_next(1)
    assert admitted is not None and admitted["id"] == first and admitted["status"] == "ADMITTED"
    assert store.next_admissible(1) is None
    nxt = store.next_admissible(2)
    assert nxt is not None and nxt["id"] == second
    assert store.counts_by_status()["ADMITTED"] == 1


def test_recover_after_restart(tmp_path: Path, clock: Clock) -> None:
    home = tmp_path / "h"
    with Store(home, clock=clock) as s:
        s.add_file("inf.csv", "text/csv", CSV)
        s.add_file("shot_a.csv", "text/csv", CSV)
        s.add_file("shot_b.csv", "text/csv", CSV)
        running = new_job(s, "RUNNING")
        admitted = new_job(s, "ADMITTED")
        pending = new_job(s)
        done = new_job(s, "COMPLETED")
        inp = tracked_inputs(s, running)[0]
        s.set_input_status(inp["id"], "processing")
    with Store(home, clock=clock) as s:
        assert sorted(s.recover_after_restart()) == sorted([running, admitted])
        for job_id in (running, admitted):
            job = s.get_job(job_id)
            assert job["status"] == "PENDING" and job["preemption_count"] == 1
            events = s.list_events(job_id)["events"]
            assert events[0]["level"] == "WARN"
            assert events[0]["message"] == "Job preempted: local backend restarted"
        # queue order kept: the recovered jobs were enqueued before `pending`
        assert [s.get_job(j)["queue_position"] for j in (running, admitted, pending)] == [1, 2, 3]
        assert s.get_input(inp["id"])["status"] == "pending"
        assert s.get_job(done)["status"] == "COMPLETED"
        assert s.recover_after_restart() == []


def test_an_upload_abandoned_past_its_expiry_is_removed_when_the_store_opens(
    tmp_path: Path, clock: Clock
) -> None:
    home = tmp_path / "h"
    with Store(home, clock=clock) as s:
        old = s.initiate_upload("old.csv", "text/csv", 8, part_size=4)
        s.record_part(old["upload_id"], 1, [b"ts,a"])
        clock.advance(UPLOAD_TTL.total_seconds() - 3600)
        fresh = s.initiate_upload("fresh.csv", "text/csv", 8, part_size=4)
        s.record_part(fresh["upload_id"], 1, [b"ts,a"])
        clock.advance(7200)  # the first is past its expiry, the second is not
    with Store(home, clock=clock) as s:
        with pytest.raises(UploadNotFound):
            s.get_upload(old["upload_id"])
        assert not (s.uploads_dir / old["upload_id"]).exists()
        assert [p["part_number"] for p in s.get_upload(fresh["upload_id"])["parts"]] == [1]
        assert (s.uploads_dir / fresh["upload_id"]).is_dir()


def test_delete_job(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    with pytest.raises(StateConflict, match="cancel it before deleting"):
        store.delete_job(job_id)
    out = store.add_output(job_id, "worker.results", "pred.csv", b"a\n")
    path = store.output_path(out["id"])
    store.add_event(job_id, "INFO", "info", "x")
    store.add_progress(job_id, "inference", 1, "x")
    store.cancel(job_id)
    result = store.delete_job(job_id)
    m.DeleteResult.model_validate(result)
    assert result == {"id": job_id, "deleted": True}
    assert not path.exists() and not path.parent.exists()
    with store._tx(write=False) as conn:
        for table in ("jobs", "inputs", "events", "progress", "outputs"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    with pytest.raises(NotFound):
        store.delete_job(job_id)
    with pytest.raises(NotFound):
        store.list_events(job_id)


# --- events and progress --------------------------------------------------------------------


def test_events(store: Store) -> None:
    job_id = new_job(store)
    inp = tracked_inputs(store, job_id)[0]["id"]
    added = [
        store.add_event(job_id, "INFO", "info", "Using accelerator: cpu"),
        store.add_event(job_id, "SUCCESS", "inference.success", "ok", {"ms": 5}, inp, 0),
        store.add_event(job_id, "FAILED", "inference.failed", "bad", None, inp, 1),
    ]
    for event in added:
        m.Event.model_validate(event)
    assert added[1]["payload"] == {"ms": 5} and added[1]["index"] == 0
    page = store.list_events(job_id)
    m.EventList.model_validate(page)
    assert [e["id"] for e in page["events"]] == sorted(e["id"] for e in added)
    assert page["events"] == added and page["job_id"] == job_id and page["total"] == 3
    assert store.list_events(job_id, level="FAILED")["events"] == [added[2]]
    assert store.list_events(job_id, event_type="info")["total"] == 1
    assert store.list_events(job_id, input_id=inp)["total"] == 2
    # tailing with offset += len(page) sees every event exactly once, in order
    seen: list[int] = []
    offset = 0
    for extra in range(3):
        store.add_event(job_id, "INFO", "info", f"more {extra}")
        chunk = store.list_events(job_id, offset=offset, limit=2)["events"]
        offset += len(chunk)
        seen += [e["id"] for e in chunk]
    seen += [e["id"] for e in store.list_events(job_id, offset=offset)["events"]]
    assert seen == [e["id"] for e in store.list_events(job_id, limit=None)["events"]]
    with pytest.raises(InvalidRequest):
        store.add_event(job_id, "DEBUG", "x", "x")
    with pytest.raises(NotFound):
        store.add_event("job_00000000000000000000000000", "INFO", "x", "x")


def test_progress(store: Store) -> None:
    job_id = new_job(store)
    inp = tracked_inputs(store, job_id)[0]["id"]
    one = store.add_progress(
        job_id, "inference", 1, "Processing input 1 of 2", {"percent_complete": 50}, None, inp, 0
    )
    two = store.add_progress(job_id, "vectorize", 2, None)
    m.ProgressEntry.model_validate(one)
    assert one["metrics"] == {"percent_complete": 50} and one["payload"] == {}
    page = store.list_progress(job_id)
    m.ProgressList.model_validate(page)
    assert page["entries"] == [one, two]
    assert store.list_progress(job_id, kind="vectorize")["entries"] == [two]
    assert store.list_progress(job_id, input_id=inp)["entries"] == [one]
    with pytest.raises(NotFound):
        store.add_progress("job_00000000000000000000000000", "k", 1, None)


# --- inputs ---------------------------------------------------------------------------------


def test_input_status_and_progress_views(store: Store) -> None:
    job_id = new_job(store, "RUNNING", n_inputs=3)
    a, b, c = tracked_inputs(store, job_id)
    shot = store.list_inputs(job_id, port_name="worker.n_shots")["inputs"][0]
    with pytest.raises(StateConflict):
        store.set_input_status(shot["id"], "processing")
    with pytest.raises(InvalidRequest):
        store.set_input_status(a["id"], "reference")
    processing = store.set_input_status(a["id"], "processing")
    assert processing["status"] == "processing" and processing["completed_at"] is None
    store.set_input_status(b["id"], "processing")
    failed = store.set_input_status(b["id"], "failed", "Input file format not supported")
    assert failed["error_message"] == "Input file format not supported"
    assert failed["completed_at"] is None
    completed = store.set_input_status(a["id"], "completed")
    assert completed["completed_at"] is not None
    with pytest.raises(StateConflict, match="already completed"):
        store.set_input_status(a["id"], "processing")
    with pytest.raises(NotFound):
        store.set_input_status("inp_00000000000000000000000000", "completed")

    counts = store.input_counts(job_id)
    m.InputProgressCounts.model_validate(counts)
    assert counts == {"job_id": job_id, "pending": 1, "processing": 0, "completed": 1, "failed": 1}
    assert store.input_counts(job_id, "worker.n_shots")["pending"] == 0
    assert store.get_job(job_id)["input_progress"] == {
        "pending": 1,
        "processing": 0,
        "completed": 1,
        "failed": 1,
    }

    p1 = store.add_progress(job_id, "inference", 1, "first", {"success": 10}, None, a["id"], 0)
    p2 = store.add_progress(job_id, "inference", 2, "second", {"success": 5}, None, a["id"], 1)
    view = store.inputs_progress(job_id)
    m.InputProgressList.model_validate(view)
    assert view["total"] == 3  # tracked only
    items = {i["input"]["id"]: i for i in view["items"]}
    assert items[a["id"]]["latest_progress"] == p2 != p1
    assert items[c["id"]]["latest_progress"] is None
    assert (items[b["id"]]["step"], items[a["id"]]["step"], items[c["id"]]["step"]) == (1, 2, None)
    assert [i["input"]["id"] for i in view["items"]] == [a["id"], b["id"], c["id"]]
    desc = store.inputs_progress(job_id, order="desc", limit=2)
    assert [i["input"]["id"] for i in desc["items"]] == [c["id"], b["id"]]
    assert desc["total"] == 3
    some = store.inputs_progress(job_id, statuses=["pending", "failed"])
    assert {i["input"]["id"] for i in some["items"]} == {b["id"], c["id"]}
    assert store.inputs_progress(job_id, port_name="worker.n_shots")["total"] == 0
    with pytest.raises(InvalidRequest):
        store.inputs_progress(job_id, order="sideways")


def test_traces(store: Store, clock: Clock) -> None:
    job_id = new_job(store, n_inputs=2)
    a, b = tracked_inputs(store, job_id)
    store.transition(job_id, "ADMITTED")
    store.transition(job_id, "RUNNING")
    etag0 = store.traces_etag(job_id)
    clock.advance(10)
    store.add_progress(job_id, "inference", 1, "x", {"success": 8, "failed": 1}, None, a["id"])
    clock.advance(10)
    store.set_input_status(a["id"], "completed")
    clock.advance(10)
    store.add_progress(job_id, "inference", 2, "x", {"success": 2, "failed": 0}, None, b["id"])
    store.set_input_status(b["id"], "failed", "boom")
    clock.advance(10)
    store.transition(job_id, "COMPLETED")
    traces = store.traces(job_id, buckets=4)  # clamped to 10
    model = m.Traces.model_validate(traces)
    assert len(traces["points"]) == 10 and model.etag == traces["etag"]
    assert traces["bucket_seconds"] == pytest.approx(4.0, abs=0.01)
    job = store.get_job(job_id)
    assert traces["points"][-1]["t"] == job["completed_at"]
    first, last = traces["points"][0], traces["points"][-1]
    assert first["items"] == {} and first["files"] == {"completed": 0, "failed": 0}
    assert last["step"] == 2 and last["files"] == {"completed": 1, "failed": 1}
    assert last["items"] == {"inference": {"success": 10, "failed": 1}}
    steps = [p["step"] for p in traces["points"]]
    assert steps == sorted(steps)
    assert traces["latest_event_at"] is not None
    assert traces["etag"] != etag0 and traces["etag"] == store.traces_etag(job_id, 4)
    assert store.traces(job_id, 5000)["points"].__len__() == 1000
    assert store.traces(job_id)["etag"] == store.traces_etag(job_id)
    empty = store.traces(new_job(store))
    assert empty["latest_event_at"] is None and len(empty["points"]) == 100


# --- outputs --------------------------------------------------------------------------------


def test_outputs(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    inp = tracked_inputs(store, job_id)[0]
    first = store.add_output(
        job_id,
        "worker.results",
        "pred_inf_part_0.csv",
        b"DATE_TIME,Prediction\n1,a\n",
        input_id=inp["id"],
    )
    second = store.add_output(job_id, "worker.results", "pred_inf_part_1.csv", io.BytesIO(b"2,b\n"))
    third = store.add_output(job_id, "worker.logs", "out.jsonl", [b'{"a":', b"1}\n"])
    for out in (first, second, third):
        m.Output.model_validate(out)
        assert _ids.is_id(out["id"], "out")
    assert first["input_file_id"] == "inf.csv" and first["input_id"] == inp["id"]
    assert first["data"]["ref"] == f"/v0.5/batch/jobs/{job_id}/outputs/{first['id']}/download"
    assert first["data"]["file_type"] == "text/csv" and first["data"]["file_extension"] == ".csv"
    assert third["data"]["file_type"] == "application/x-ndjson"
    assert store.output_path(first["id"]).read_bytes() == b"DATE_TIME,Prediction\n1,a\n"
    assert store.output_path(third["id"]).read_bytes() == b'{"a":1}\n'
    page = store.list_outputs(job_id)
    m.OutputList.model_validate(page)
    assert [o["id"] for o in page["outputs"]] == [first["id"], second["id"], third["id"]]
    assert store.list_outputs(job_id, port_name="worker.logs")["outputs"] == [third]
    assert store.list_outputs(job_id, input_id=inp["id"])["outputs"] == [first]
    assert store.list_outputs(job_id, offset=1, limit=1)["outputs"] == [second]
    assert store.get_output(second["id"]) == second
    with pytest.raises(NotFound):
        store.output_path("out_00000000000000000000000000")
    with pytest.raises(NotFound):
        store.add_output("job_00000000000000000000000000", "p", "x.csv", b"")
    with pytest.raises(InvalidFileId):
        store.add_output(job_id, "p", "../escape.csv", b"")
    leftovers = [p.name for p in (store.outputs_dir / job_id).iterdir()]
    assert sorted(leftovers) == sorted([first["id"], second["id"], third["id"]])


# --- files ----------------------------------------------------------------------------------

HOSTILE = [
    "../x",
    "a/b",
    "a\\b",
    "\x00",
    "a\x00b",
    "x" * 300,
    "é" * 200,  # 400 bytes
    ".",
    "..",
    "...",
    "",
    ".hidden",
    "/etc/passwd",
    "C:\\Windows\\x",
    "a\nb",
    "tab\tname",
    "del\x7f",
    "c1\x85",
    " leading",
    "trailing ",
    "\ud800.csv",
    "\u202egnp.exe",  # right-to-left override (Cf)
    "zero\u200bwidth.csv",  # zero width space (Cf)
    "\ufeffbom.csv",  # byte order mark (Cf)
    "line\u2028sep.csv",  # Zl
    "para\u2029sep.csv",  # Zp
    None,
    42,
]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_validate_file_id_refuses_hostile_names(name: Any, store: Store) -> None:
    with pytest.raises(InvalidFileId) as info:
        validate_file_id(name)
    assert info.value.status == 400
    if isinstance(name, str):
        with pytest.raises(InvalidFileId):
            store.add_file(name, "text/plain", b"x")
        with pytest.raises(InvalidFileId):
            store.initiate_upload(name, "text/plain", 1)


@pytest.mark.parametrize(
    "name",
    [
        "volve_inference.csv",
        "Ring_Dashcam_Traffic.mp4",
        "a..b.csv",
        "名前.csv",
        "x" * 255,
        "with space.jsonl",
        "file-abc123",
    ],
)
def test_validate_file_id_accepts_normal_names(name: str) -> None:
    assert validate_file_id(name) == name


def test_add_get_delete_file(store: Store, tmp_path: Path, clock: Clock) -> None:
    src = tmp_path / "big.csv"
    src.write_bytes(b"h1,h2\r\n" + b"1,2\r\n" * 300_000)  # several chunks
    meta = store.add_file("big.csv", "text/csv", src)
    m.FileMeta.model_validate(meta)
    assert meta["file_attributes"] == {
        "num_rows": 300_000,
        "num_columns": 2,
        "column_headers": ["h1", "h2"],
    }
    assert meta["file_status"] == "FILE_STATUS_INGESTED" and meta["ingested"] is True
    assert meta["num_bytes"] == src.stat().st_size and _ids.is_id(meta["file_uid"], "fil")
    assert meta["file_index"] == 3 and meta["is_valid"] is True and meta["file_tags"] == {}
    assert store.file_path("big.csv").read_bytes() == src.read_bytes()
    assert store.file_path("big.csv").name == meta["file_uid"]
    stream = store.add_file("p.jsonl", "application/x-ndjson", io.BytesIO(b'{"prompt":"x"}\n'))
    assert stream["file_attributes"] == {}
    no_newline = store.add_file("n.csv", "text/csv", b"a;b")
    assert no_newline["file_attributes"]["num_rows"] == 0
    with pytest.raises(FileExists, match=r"File already exists: big\.csv") as info:
        store.add_file("big.csv", "text/csv", b"other")
    assert info.value.status == 409
    assert store.get_file("big.csv") == meta and store.find_file("nope") is None
    with pytest.raises(NotFound):
        store.get_file("nope")
    info_before = store.files_info()
    m.FilesInfo.model_validate(info_before)
    assert info_before["num_files"] == 6 and info_before["num_ingested"] == 6
    assert isinstance(info_before["last_updated"], float)
    clock.advance(60)
    deleted = store.delete_file("big.csv")
    m.FileUploadResult.model_validate(deleted)
    assert deleted == {"is_valid": True, "file_id": "big.csv", "file_uid": meta["file_uid"]}
    assert not (store.files_dir / meta["file_uid"]).exists()
    after = store.files_info()
    assert (
        after["num_files"] == 5
        and after["num_bytes"] == info_before["num_bytes"] - meta["num_bytes"]
    )
    assert after["last_updated"] > info_before["last_updated"]
    with pytest.raises(NotFound):
        store.delete_file("big.csv")
    assert store.add_file("big.csv", "text/csv", b"a\n1\n")["num_bytes"] == 4  # name free again
    assert [p.name for p in store.files_dir.iterdir() if p.name.startswith(".")] == []


def test_files_info_empty(tmp_path: Path) -> None:
    with Store(tmp_path / "e") as s:
        assert s.files_info() == {
            "num_files": 0,
            "num_bytes": 0,
            "num_ingested": 0,
            "last_updated": None,
        }
        assert s.list_files_cursor() == {
            "data": [],
            "has_more": False,
            "next_cursor": None,
            "prev_cursor": None,
        }


def test_list_files_cursor_and_shards(store: Store) -> None:
    for i in range(7):
        store.add_file(f"f{i}.txt", "text/plain", b"x" * i)
    names = [f"f{i}.txt" for i in reversed(range(7))] + ["shot_b.csv", "shot_a.csv", "inf.csv"]
    seen: list[str] = []
    page = store.list_files_cursor(limit=4)
    pages = [page]
    while True:
        m.FileMetaPage.model_validate(page)
        seen += [f["file_id"] for f in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        page = store.list_files_cursor(limit=4, after=page["next_cursor"])
        pages.append(page)
    assert seen == names and len(pages) == 3
    assert pages[0]["prev_cursor"] is None and pages[1]["prev_cursor"] is not None
    back = store.list_files_cursor(limit=4, before=pages[1]["prev_cursor"])
    assert [f["file_id"] for f in back["data"]] == names[:4]
    assert back["has_more"] is False and back["prev_cursor"] is None
    back2 = store.list_files_cursor(limit=2, before=pages[2]["prev_cursor"])
    assert [f["file_id"] for f in back2["data"]] == names[6:8] and back2["has_more"] is True
    csvs = store.list_files_cursor(file_type="text/csv")
    assert [f["file_id"] for f in csvs["data"]] == ["shot_b.csv", "shot_a.csv", "inf.csv"]
    with pytest.raises(InvalidRequest):
        store.list_files_cursor(after="abc", before="abc")
    with pytest.raises(InvalidRequest):
        store.list_files_cursor(after="!!not-a-cursor")

    everything = store.list_files_shard()
    assert [f["file_id"] for f in everything] == list(reversed(names))
    assert [f["file_index"] for f in everything] == list(range(10))
    shard1 = store.list_files_shard(1, 3)
    assert [f["file_id"] for f in shard1] == ["f0.txt", "f1.txt", "f2.txt"]
    assert store.list_files_shard(5, 3) == []
    assert [f["file_id"] for f in store.list_files_shard(file_type="text/csv")] == [
        "inf.csv",
        "shot_a.csv",
        "shot_b.csv",
    ]
    for item in everything:
        m.FileMeta.model_validate(item)


# --- direct uploads -------------------------------------------------------------------------


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def test_upload_flow_with_resume_across_reopen(tmp_path: Path) -> None:
    home = tmp_path / "h"
    payload = b"col1,col2\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(3000))
    size = 10_000
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    with Store(home) as s:
        started = s.initiate_upload("data.csv", "text/csv", len(payload), part_size=size)
        m.InitiateUploadResponse.model_validate(started)
        assert _ids.is_id(started["upload_id"], "upl") and _ids.is_id(started["file_uid"], "fil")
        assert started["num_parts"] == len(chunks) == 4 and started["is_resume"] is False
        assert started["strategy"] == "multipart" and started["file_name"] == "data.csv"
        assert [p["part_number"] for p in started["parts"]] == [1, 2, 3, 4]
        assert [(p["offset"], p["length"]) for p in started["parts"]] == [
            (i * size, len(c)) for i, c in enumerate(chunks)
        ]
        upload_id = started["upload_id"]
        assert started["parts"][0]["url"] == f"/v0.5/files/uploads/{upload_id}/parts/1"
        tokens = {
            1: s.record_part(upload_id, 1, chunks[0]),
            2: s.record_part(upload_id, 2, io.BytesIO(chunks[1])),
        }
        assert tokens[1] == _etag(chunks[0])
        checkpoint = s.checkpoint_parts(upload_id, [{"part_number": 1, "part_token": tokens[1]}])
        m.CheckpointPartsResponse.model_validate(checkpoint)
        assert checkpoint == {"num_checkpointed": 1}
        with pytest.raises(InvalidRequest, match="mismatch"):
            s.checkpoint_parts(upload_id, [{"part_number": 2, "part_token": '"beef"'}])
        with pytest.raises(InvalidRequest, match="must be"):
            s.record_part(upload_id, 3, b"short")
        with pytest.raises(InvalidRequest, match="out of range"):
            s.record_part(upload_id, 5, b"x")
        with pytest.raises(InvalidRequest, match="out of range"):
            s.record_part(upload_id, 0, b"x")
        fresh = s.initiate_upload("data.csv", "text/csv", len(payload), part_size=size)
        assert fresh["upload_id"] != upload_id  # without resume: a new upload

    with Store(home) as s:  # "restart": the upload, its parts and checkpoints survive
        with pytest.raises(StateConflict, match="in progress"):
            s.initiate_upload("data.csv", "text/csv", len(payload) + 1, resume_if_started=True)
        with pytest.raises(StateConflict):
            s.initiate_upload("data.csv", "text/plain", len(payload), resume_if_started=True)
        # resume picks the most recent in-progress upload of the name: abort the fresh one
        s.abort_upload(fresh["upload_id"])
        resumed = s.initiate_upload("data.csv", "text/csv", len(payload), resume_if_started=True)
        m.InitiateUploadResponse.model_validate(resumed)
        assert resumed["upload_id"] == upload_id and resumed["is_resume"] is True
        assert [p["part_number"] for p in resumed["parts"]] == [2, 3, 4]
        assert s.part_urls(upload_id, [4, 2])["parts"][0]["part_number"] == 4
        tokens[3] = s.record_part(upload_id, 3, chunks[2])
        with pytest.raises(InvalidRequest, match="Part 4"):
            s.complete_upload(
                upload_id, [{"part_number": n, "part_token": tokens[n]} for n in (2, 3)]
            )
        tokens[4] = s.record_part(upload_id, 4, iter([chunks[3]]))
        with pytest.raises(InvalidRequest, match="Missing part_token for part 2"):
            s.complete_upload(upload_id, [{"part_number": 3, "part_token": tokens[3]}])
        parts = [
            {"part_number": 2, "part_token": tokens[2].strip('"')},  # without quotes
            m.PartToken(part_number=3, part_token=tokens[3]),
            {"part_number": 4, "part_token": tokens[4]},
        ]
        done = s.complete_upload(upload_id, parts)
        m.CompleteUploadResponse.model_validate(done)
        assert done["file_name"] == "data.csv" and done["num_bytes"] == len(payload)
        assert done["file_uid"] == started["file_uid"] and done["file_status"] == "Ingested"
        assert done["file_attributes"]["num_rows"] == 3000
        assert s.file_path("data.csv").read_bytes() == payload
        assert not (s.uploads_dir / upload_id).exists()
        with pytest.raises(StateConflict, match="already completed"):
            s.complete_upload(upload_id, [])
        with pytest.raises(StateConflict):
            s.abort_upload(upload_id)
        with pytest.raises(FileExists):
            s.initiate_upload("data.csv", "text/csv", 5)
        with pytest.raises(UploadNotFound) as info:
            s.record_part("upl_00000000000000000000000000", 1, b"")
        assert info.value.code == "upload_not_found" and info.value.status == 404


def test_upload_small_abort_and_empty(store: Store) -> None:
    small = store.initiate_upload("tiny.txt", "text/plain", 3)
    assert small["strategy"] == "simple" and small["num_parts"] == 1
    token = store.record_part(small["upload_id"], 1, b"abc")
    store.abort_upload(small["upload_id"])
    with pytest.raises(UploadNotFound):
        store.complete_upload(small["upload_id"], [{"part_number": 1, "part_token": token}])
    assert not (store.uploads_dir / small["upload_id"]).exists()

    empty = store.initiate_upload("empty.txt", "text/plain", 0)
    assert empty["parts"] == [
        {
            "part_number": 1,
            "url": f"/v0.5/files/uploads/{empty['upload_id']}/parts/1",
            "offset": 0,
            "length": 0,
            "expires_at": None,
        }
    ]
    token = store.record_part(empty["upload_id"], 1, b"")
    with pytest.raises(InvalidRequest, match="integrity"):
        store.complete_upload(
            empty["upload_id"], [{"part_number": 1, "part_token": token}], "AAAAAA=="
        )
    store.complete_upload(empty["upload_id"], [{"part_number": 1, "part_token": token}])
    assert store.get_file("empty.txt")["num_bytes"] == 0

    # the name gets taken by a simple upload while a direct upload is in flight
    racing = store.initiate_upload("race.txt", "text/plain", 1)
    token = store.record_part(racing["upload_id"], 1, b"1")
    store.add_file("race.txt", "text/plain", b"2")
    with pytest.raises(FileExists):
        store.complete_upload(racing["upload_id"], [{"part_number": 1, "part_token": token}])
    assert store.file_path("race.txt").read_bytes() == b"2"
    with pytest.raises(InvalidRequest):
        store.initiate_upload("neg.txt", "text/plain", -1)
    with pytest.raises(InvalidRequest):
        store.checkpoint_parts(racing["upload_id"], [{"part_number": "1"}])


# --- concurrency and crash consistency ------------------------------------------------------


def test_threads_write_concurrently(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                store.add_event(job_id, "INFO", "info", f"{n}-{i}")
                store.add_progress(job_id, "inference", i, None, {"success": 1})
                if i % 10 == 0:
                    store.add_output(job_id, "worker.results", f"t{n}-{i}.csv", b"x" * i)
                    store.list_jobs()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = store.list_events(job_id, limit=None)["events"]
    assert len(events) == 400 and len({e["id"] for e in events}) == 400
    assert store.list_progress(job_id)["total"] == 400
    assert store.list_outputs(job_id)["total"] == 40
    assert store.integrity_check() == "ok"


def _crash_worker(home: str, seed: int, ready: Any) -> None:
    """Child process: write through every path of the store, forever (until SIGKILL)."""
    rng = random.Random(seed)
    store = Store(Path(home))
    ready.set()
    i = 0
    while True:
        i += 1
        name = f"w{seed}-{i}.csv"
        store.add_file(name, "text/csv", b"a,b\n" + b"1,2\n" * rng.randint(1, 20_000))
        n = rng.randint(1, 30)
        job = store.create_job(
            {
                "name": f"crash {seed} {i}",
                "pipeline_key": "k",
                "inputs": {
                    "worker.inference": [{"file_id": name}] * n,
                    "worker.n_shots": [{"file_id": name}],
                },
            },
            "1",
            PORTS,
        )
        store.transition(job["id"], "ADMITTED")
        store.transition(job["id"], "RUNNING", event=("INFO", "running_job", "Running job"))
        for item in store.list_inputs(job["id"], port_name="worker.inference", limit=3)["inputs"]:
            store.set_input_status(item["id"], "processing")
            store.add_progress(job["id"], "inference", 1, "x", {"success": 3}, None, item["id"])
            store.add_output(
                job["id"],
                "worker.results",
                "pred.csv",
                rng.randbytes(rng.randint(0, 300_000)),
                input_id=item["id"],
            )
            store.set_input_status(item["id"], "completed")
        up = store.initiate_upload(
            f"u{seed}-{i}.bin", "application/octet-stream", 25_000, part_size=10_000
        )
        tokens = [
            {
                "part_number": p["part_number"],
                "part_token": store.record_part(
                    up["upload_id"], p["part_number"], rng.randbytes(p["length"])
                ),
            }
            for p in up["parts"]
        ]
        store.checkpoint_parts(up["upload_id"], tokens[:1])
        if i % 2:
            store.complete_upload(up["upload_id"], tokens[1:])
        store.transition(job["id"], rng.choice(["COMPLETED", "FAILED", "PREEMPTED"]))
        if i % 5 == 0:
            store.delete_job(job["id"])
        if i % 7 == 0:
            store.delete_file(name)


def _check_consistent(home: Path) -> None:
    with Store(home) as s:
        assert s.integrity_check() == "ok"
        with s._tx(write=False) as conn:
            bad = conn.execute(
                "SELECT j.id FROM jobs j WHERE j.num_inputs != "
                "(SELECT COUNT(*) FROM inputs i WHERE i.job_id = j.id)"
            ).fetchall()
            assert bad == []
            real = dict(
                conn.execute(
                    "SELECT pipeline_type, COUNT(*) FROM jobs "
                    "WHERE status IN ('PENDING','PREEMPTED') GROUP BY pipeline_type"
                ).fetchall()
            )
            counted = dict(
                conn.execute(
                    "SELECT pipeline_type, depth FROM queue_counts WHERE depth > 0"
                ).fetchall()
            )
            assert real == counted
            files = {r["file_uid"]: r["num_bytes"] for r in conn.execute("SELECT * FROM files")}
            assert {p.name: p.stat().st_size for p in s.files_dir.iterdir()} == files
            outputs = {
                (r["job_id"], r["id"]): r["num_bytes"]
                for r in conn.execute("SELECT * FROM outputs")
            }
            on_disk = {
                (d.name, p.name): p.stat().st_size
                for d in s.outputs_dir.iterdir()
                for p in d.iterdir()
            }
            assert on_disk == outputs
            parts = {
                (r["upload_id"], f"{r['part_number']:06d}"): r["num_bytes"]
                for r in conn.execute("SELECT * FROM upload_parts")
            }
            on_disk = {
                (d.name, p.name): p.stat().st_size
                for d in s.uploads_dir.iterdir()
                for p in d.iterdir()
            }
            assert on_disk == parts
            assert not [p for p in home.rglob(".tmp-*")]
        for job in s.list_jobs(limit=None)["jobs"]:
            m.JobRecord.model_validate(job)
        s.recover_after_restart()
        assert s.counts_by_status()["RUNNING"] == 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_leaves_a_consistent_store(tmp_path: Path) -> None:
    home = tmp_path / "crash"
    Store(home).close()
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(1234)
    for round_no in range(6):
        ready = ctx.Event()
        child = ctx.Process(target=_crash_worker, args=(str(home), round_no, ready))
        child.start()
        assert ready.wait(60), "child did not start"
        threading.Event().wait(rng.uniform(0.05, 0.8))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        _check_consistent(home)
    with Store(home) as s:
        assert s.list_jobs()["total"] > 0  # the children did write something


def test_open_sweeps_orphans_and_dead_temp_files(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with Store(home) as s:
        s.add_file("keep.csv", "text/csv", CSV)
        uid = s.get_file("keep.csv")["file_uid"]
    dead = home / "files" / ".tmp-999999999-abc"
    dead.write_bytes(b"partial")
    live = home / "files" / f".tmp-{os.getpid()}-abc"  # a live writer's temp file stays
    live.write_bytes(b"writing")
    orphan = home / "files" / "fil_00000000000000000000000000"
    orphan.write_bytes(b"never committed")
    (home / "outputs" / "job_00000000000000000000000000").mkdir()
    (home / "uploads" / "upl_00000000000000000000000000").mkdir()
    with Store(home):
        pass
    assert sorted(p.name for p in (home / "files").iterdir()) == sorted([uid, live.name])
    assert list((home / "outputs").iterdir()) == [] and list((home / "uploads").iterdir()) == []


# --- reviewer findings: pool, failed commits, upload races, bad input, stale workers ---------


def _db_fds(store: Store) -> int | None:
    """Open descriptors of this process on ``state.sqlite3`` (None without /proc)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return None
    target = os.path.realpath(store.db_path)
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if str(fd.readlink()) == target:
                count += 1
    return count


def test_connections_are_pooled_not_leaked_by_passing_threads(store: Store) -> None:
    """Threads that come and go (an ASGI pool retiring idle threads) leave no connection."""
    job_id = new_job(store, "RUNNING")
    bursts, width = 5, 24
    errors: list[BaseException] = []

    def work(barrier: threading.Barrier, n: int) -> None:
        try:
            barrier.wait(30)  # all of a burst at once, so the pool must grow past its cap
            store.add_event(job_id, "INFO", "info", f"e{n}")
            store.get_job(job_id)
            store.list_events(job_id, limit=5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for burst in range(bursts):
        barrier = threading.Barrier(width)
        threads = [
            threading.Thread(target=work, args=(barrier, burst * width + i)) for i in range(width)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert 1 <= store.connection_count() <= Store.MAX_IDLE_CONNECTIONS
        # SQLite keeps the descriptor of a closed connection while others hold POSIX locks on
        # the file and reuses it for the next one: bounded by the peak, never growing.
        fds = _db_fds(store)
        assert fds is None or fds <= width
    assert store.list_events(job_id)["total"] == bursts * width
    store.close()
    assert store.connection_count() == 0
    assert _db_fds(store) in (None, 0)


def test_nested_transactions_share_one_connection(store: Store) -> None:
    with store._tx() as outer:
        job_id = new_job(store)  # joins: one transaction, one connection
        with store._tx(write=False) as inner:
            assert inner is outer
        assert store.connection_count() == 1
    assert store.get_job(job_id)["status"] == "PENDING"
    with pytest.raises(RuntimeError), store._tx():
        store.add_event(job_id, "INFO", "info", "rolled back with the outer transaction")
        raise RuntimeError
    assert store.list_events(job_id)["total"] == 0


def test_failed_commit_is_rolled_back_and_releases_the_lock(store: Store) -> None:
    job_id = new_job(store)
    with pytest.raises(sqlite3.IntegrityError), store._tx() as conn:
        conn.execute("PRAGMA defer_foreign_keys = ON")  # the dangling row fails at COMMIT
        conn.execute(
            "INSERT INTO events (job_id, level, payload, created_at) VALUES (?, ?, ?, ?)",
            ("job_00000000000000000000000000", "INFO", "{}", "2026-01-01T00:00:00.000000Z"),
        )
    raw = sqlite3.connect(store.db_path, timeout=0.5, isolation_level=None)
    try:  # nobody holds the write lock any more
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("ROLLBACK")
    finally:
        raw.close()
    store.add_event(job_id, "INFO", "info", "after")  # a real transaction of its own
    with Store(store.home) as other:
        assert [e["message"] for e in other.list_events(job_id)["events"]] == ["after"]
    assert store.integrity_check() == "ok"


def _two_part_upload(store: Store, name: str, size: int = 10) -> tuple[str, list[JSON]]:
    started = store.initiate_upload(name, "application/octet-stream", 2 * size, part_size=size)
    upload_id = started["upload_id"]
    parts = [
        {"part_number": n, "part_token": store.record_part(upload_id, n, bytes([n]) * size)}
        for n in (1, 2)
    ]
    return upload_id, parts


def test_complete_upload_excludes_abort_parts_and_a_second_complete(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_id, parts = _two_part_upload(store, "big.bin")
    assembling, go = threading.Event(), threading.Event()
    spool = store._spool

    def paused_spool(directory: Path, source: Any, probe: Any = None) -> Any:
        if directory == store.files_dir:  # complete_upload is about to read the parts
            assembling.set()
            assert go.wait(30)
        return spool(directory, source, probe)

    monkeypatch.setattr(store, "_spool", paused_spool)
    result: dict[str, Any] = {}

    def complete() -> None:
        try:
            result["done"] = store.complete_upload(upload_id, parts)
        except BaseException as exc:  # pragma: no cover - reported below
            result["error"] = exc

    thread = threading.Thread(target=complete)
    thread.start()
    try:
        assert assembling.wait(30)
        assert store.get_upload(upload_id)["status"] == "completing"
        for call in (
            partial(store.abort_upload, upload_id),
            partial(store.record_part, upload_id, 1, b"\x09" * 10),
            partial(store.complete_upload, upload_id, parts),
            partial(store.checkpoint_parts, upload_id, parts[:1]),
        ):
            with pytest.raises(StateConflict, match="being completed") as info:
                call()
            assert info.value.status == 409
    finally:
        go.set()
        thread.join(30)
    assert "error" not in result, result
    assert result["done"]["file_attributes"] == {"metadata_status": "not_extracted"}
    m.CompleteUploadResponse.model_validate(result["done"])
    assert store.file_path("big.bin").read_bytes() == b"\x01" * 10 + b"\x02" * 10
    assert store.get_file("big.bin")["file_attributes"] == {}
    assert store.get_upload(upload_id)["status"] == "completed"
    assert not (store.uploads_dir / upload_id).exists()


def test_complete_upload_with_a_missing_part_is_a_conflict_not_a_crash(store: Store) -> None:
    upload_id, parts = _two_part_upload(store, "gone.bin")
    (store.uploads_dir / upload_id / "000002").unlink()
    with pytest.raises(StateConflict, match=r"Part 2 .* is missing") as info:
        store.complete_upload(upload_id, parts)
    assert info.value.status == 409
    assert store.get_upload(upload_id)["status"] == "active"  # back to uploading
    assert store.find_file("gone.bin") is None
    parts[1]["part_token"] = store.record_part(upload_id, 2, b"\x02" * 10)
    assert store.complete_upload(upload_id, parts)["num_bytes"] == 20


def test_complete_and_abort_race_in_threads(store: Store) -> None:
    """Whoever wins, the loser gets a 404/409 store error, never a bare OSError (a 500)."""
    for round_no in range(25):
        upload_id, parts = _two_part_upload(store, f"race{round_no}.bin", size=64 * 1024)
        barrier = threading.Barrier(3)
        outcomes: list[Any] = []

        def attempt(
            call: Callable[[], Any],
            barrier: threading.Barrier = barrier,
            outcomes: list[Any] = outcomes,
        ) -> None:
            barrier.wait(30)
            try:
                call()
                outcomes.append("ok")
            except StoreError as exc:
                outcomes.append(exc.status)
            except BaseException as exc:  # pragma: no cover - reported below
                outcomes.append(exc)

        calls = [
            partial(store.complete_upload, upload_id, parts),
            partial(store.abort_upload, upload_id),
            partial(store.record_part, upload_id, 1, b"\x01" * 64 * 1024),
        ]
        threads = [threading.Thread(target=attempt, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(o in ("ok", 404, 409) for o in outcomes), outcomes
        meta = store.find_file(f"race{round_no}.bin")
        if meta is not None:
            assert (
                store.file_path(meta["file_id"]).read_bytes() == b"\x01" * 65536 + b"\x02" * 65536
            )
        else:  # aborted: the upload is gone with its parts
            with pytest.raises(NotFound):
                store.get_upload(upload_id)
            assert not (store.uploads_dir / upload_id).exists()
    assert store.integrity_check() == "ok"


def test_schema_1_store_is_migrated_to_2(tmp_path: Path) -> None:
    from atai_magics.local.store import _migrate_0_to_1

    home = tmp_path / "old"
    home.mkdir()
    raw = sqlite3.connect(home / "state.sqlite3", isolation_level=None)
    _migrate_0_to_1(raw)
    raw.execute("PRAGMA user_version = 1")
    raw.close()
    with Store(home) as s:
        upload_id, parts = _two_part_upload(s, "after-migration.bin")
        assert s.complete_upload(upload_id, parts)["num_bytes"] == 20
        with s._tx(write=False) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_out_of_range_integers_are_invalid_requests(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    huge = 10**30
    calls: list[Callable[[], Any]] = [
        partial(store.list_jobs, offset=huge),
        partial(store.list_jobs, limit=2**63),
        partial(store.list_events, job_id, offset=huge),
        partial(store.list_progress, job_id, limit=huge),
        partial(store.list_inputs, job_id, offset=huge),
        partial(store.list_outputs, job_id, offset=huge),
        partial(store.inputs_progress, job_id, offset=huge),
        partial(store.list_files_shard, shard_index=huge),
        partial(store.list_files_cursor, after=_cursor(f"f{huge}")),
        partial(store.list_files_cursor, before=_cursor(f"f{2**63}")),
        partial(store.list_files_cursor, after=_cursor("f-5")),
        partial(store.initiate_upload, "huge.bin", "application/octet-stream", huge),
        partial(store.initiate_upload, "huge.bin", "application/octet-stream", 1, part_size=huge),
        partial(store.add_event, job_id, "INFO", "info", "x", index=huge),
        partial(store.add_progress, job_id, "inference", huge, None),
    ]
    for call in calls:
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.status == 400, call
    # in range but past the end: an empty answer, not an error
    assert store.list_jobs(offset=2**63 - 1)["jobs"] == []
    assert store.list_files_shard(shard_index=2**62) == []
    assert store.list_files_cursor(after=_cursor(f"f{2**63 - 1}"))["data"] != []


def test_lone_surrogates_are_invalid_requests(store: Store) -> None:
    bad = "\ud800"
    job_id = new_job(store)
    calls: list[Callable[[], Any]] = [
        partial(store.create_job, request(name=bad), "1", PORTS),
        partial(store.create_job, request(parameters={"worker": {bad: 1}}), "1", PORTS),
        partial(
            store.create_job,
            {"name": "x", "pipeline_key": "k", "inputs": {"worker.inference": [{"file_id": bad}]}},
            "1",
            PORTS,
        ),
        partial(store.add_file, f"{bad}.csv", "text/csv", CSV),
        partial(store.add_file, "ok.txt", bad, b"x"),
        partial(store.find_file, bad),
        partial(store.initiate_upload, "ok.bin", bad, 1),
        partial(store.list_jobs, q=bad),
        partial(store.list_events, job_id, event_type=bad),
        partial(store.add_event, job_id, "INFO", "info", bad),
        partial(store.add_output, job_id, "worker.results", f"{bad}.csv", b"x"),
    ]
    for call in calls:
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.status == 400, call
    assert store.list_jobs()["total"] == 1
    with pytest.raises(InvalidFileId):
        validate_file_id(f"a{bad}b")


def test_add_output_for_a_deleted_job_leaves_no_directory(store: Store) -> None:
    job_id = new_job(store, "CANCELLED")
    store.delete_job(job_id)
    with pytest.raises(NotFound):
        store.add_output(job_id, "worker.results", "late.csv", b"late")
    assert not (store.outputs_dir / job_id).exists()
    assert list(store.outputs_dir.iterdir()) == []


def test_guarded_worker_writes_stop_with_their_attempt(store: Store) -> None:
    job_id = new_job(store, "RUNNING")
    inp = tracked_inputs(store, job_id)[0]["id"]
    first = Store.attempt_of(store.get_job(job_id))
    assert first == 0

    def writes(attempt: int) -> list[Callable[[], Any]]:
        return [
            partial(store.add_event, job_id, "INFO", "info", f"a{attempt}", attempt=attempt),
            partial(
                store.add_progress, job_id, "inference", 1, None, {"success": 1}, attempt=attempt
            ),
            partial(store.set_input_status, inp, "processing", attempt=attempt),
            partial(store.add_output, job_id, "worker.results", "o.csv", b"x", attempt=attempt),
        ]

    def counts() -> tuple[int, int, int, list[str]]:
        return (
            store.list_events(job_id)["total"],
            store.list_progress(job_id)["total"],
            store.list_outputs(job_id)["total"],
            [i["status"] for i in tracked_inputs(store, job_id)],
        )

    def refused(attempt: int) -> None:
        before = counts()
        for write in writes(attempt):
            with pytest.raises(StaleAttempt) as info:
                write()
            assert info.value.status == 409
        assert counts() == before

    for write in writes(first):  # the current attempt writes normally
        write()
    store.cancel(job_id)
    refused(first)  # after a cancel
    store.retry(job_id)
    refused(first)  # while re-queued
    store.transition(job_id, "ADMITTED")
    second = Store.attempt_of(store.get_job(job_id))
    assert second == first + 1
    refused(first)  # the old attempt cannot write into the new one
    for write in writes(second):
        write()
    store.transition(job_id, "RUNNING")
    store.transition(job_id, "PREEMPTED")
    store.transition(job_id, "PENDING")
    store.transition(job_id, "ADMITTED")
    assert Store.attempt_of(store.get_job(job_id)) == second + 1
    refused(second)  # after a preemption
    # the scheduler's own (unguarded) writes are not affected
    store.add_event(job_id, "INFO", "info", "scheduler")
    store.cancel(job_id)
    store.delete_job(job_id)
    with pytest.raises(StaleAttempt):
        store.add_event(job_id, "INFO", "info", "gone", attempt=second + 1)
