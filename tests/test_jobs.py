"""The Job handle and the journal, against the real local backend over a socket."""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path

import pytest

from atai_magics.api import models as m
from atai_magics.api.client import Client
from atai_magics.jobs import Job, JobTimeout, Journal, JournalEntry, ordered_outputs
from tests.conftest import LocalBackend, job_lookups


def _msc_job(client, tmp_path: Path, *, flush: int = 2) -> m.JobRecord:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    rows = ["ts,a"] + [f"{i},{(i % 7) / 7:.3f}" for i in range(120)]
    up = ["ts,a"] + [f"{i},{i / 120:.3f}" for i in range(120)]
    for name, lines in ((f"flat-{tag}.csv", rows), (f"up-{tag}.csv", up), (f"inf-{tag}.csv", up)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        client.upload_file(tmp_path / name)
    return client.create_job(
        {
            "name": f"jobs-{tag}",
            "pipeline_key": "machine-state-classification",
            "inputs": {
                "worker.inference": [{"file_id": f"inf-{tag}.csv"}],
                "worker.n_shots": [
                    {"file_id": f"flat-{tag}.csv", "metadata": {"class": "flat"}},
                    {"file_id": f"up-{tag}.csv", "metadata": {"class": "up"}},
                ],
            },
            "parameters": {
                "worker": {
                    "config": {
                        "batch_size": 4,
                        "flush_every_n_iteration": flush,
                        "reader_config": {
                            "data_columns": ["a"],
                            "timestamp_column": "ts",
                            "window_size": 8,
                            "step_size": 1,
                        },
                    }
                }
            },
        }
    )


def _running_job(client: Client) -> Job:
    """A slow-test job that runs until cancelled."""
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    record = client.create_job(
        {
            "name": f"slow-{tag}",
            "pipeline_key": "slow-test",
            "inputs": {"worker.data": [{"file_id": f"slow-{tag}.txt"}]},
            "parameters": {"worker": {"config": {"seconds": 600}}},
        }
    )
    return Job(record, client)


def test_wait_results_and_repr(local_backend: LocalBackend, tmp_path: Path) -> None:
    client = local_backend.client()
    job = Job(_msc_job(client, tmp_path), client)
    changes: list[str] = []
    job.wait(timeout=120, on_change=lambda j: changes.append(j.status.value))
    assert job.status == m.JobStatus.COMPLETED
    assert changes[-1] == "COMPLETED"
    assert job.summary == "completed" and job.failures == []

    outputs = job.outputs()
    assert len(outputs) == 15  # 113 windows, 4 per iteration, a part every 2 iterations
    records = job.results(tmp_path / "out")
    rows = records.to_dict("records") if hasattr(records, "to_dict") else records
    assert [int(r["ts"]) for r in rows] == list(range(7, 120))  # parts merged in order
    assert {r["Prediction"] for r in rows} <= {"flat", "up"}

    text = job._repr_mimebundle_()["text/plain"]
    assert text.splitlines()[1] == job.id  # the id alone on its line, for sanitizers
    assert "completed" in text.splitlines()[0]
    assert repr(job) == f"<Job {job.id} {job.name!r} COMPLETED>"
    assert job.cancel() == "already finished (COMPLETED)"


def test_completed_with_failures_is_never_plain_success(
    local_backend: LocalBackend, tmp_path: Path
) -> None:
    client = local_backend.client()
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b'{"prompt": "walking"}\n', f"prompts-{tag}.txt", "text/plain")
    record = client.create_job(
        {
            "name": f"ad-{tag}",
            "pipeline_key": "activity-detection",
            "inputs": {"worker.data": [{"file_id": f"prompts-{tag}.txt"}]},
        }
    )
    job = Job(record, client).wait(timeout=120)
    assert job.status == m.JobStatus.COMPLETED
    assert job.summary == "completed with failures"
    assert job.failures == ["1 of 1 inputs failed", "1 FAILED event"]
    assert "completed with failures" in job._repr_mimebundle_()["text/plain"]


def test_cancel_then_retry(local_backend: LocalBackend) -> None:
    job = _running_job(local_backend.client())
    assert job.cancel() == "cancelled"
    assert job.status == m.JobStatus.CANCELLED
    assert job.cancel() == "already finished (CANCELLED)"
    job.retry()
    assert job.record.retry_count == 1 and not job.done
    assert job.cancel() == "cancelled"


def test_wait_times_out_without_touching_the_job(
    local_backend: LocalBackend, tmp_path: Path
) -> None:
    client = local_backend.client()
    job = Job(_msc_job(client, tmp_path), client)
    with pytest.raises(JobTimeout):
        job.wait(timeout=0)
    assert client.get_job(job.id).status != m.JobStatus.CANCELLED


def test_wait_asks_only_when_no_record_came_from_elsewhere(
    local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record brought during a pause (by a card's watcher) stands in for the next check."""
    client, elsewhere = local_backend.client(), local_backend.client()
    job = _running_job(client)
    asked = job_lookups(monkeypatch, client)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            elsewhere.cancel_job(job.id)
        if len(pauses) != 2:  # nothing comes during the second pause
            job.update(elsewhere.get_job(job.id))

    job.wait(sleep=pause)
    assert job.status == m.JobStatus.CANCELLED
    assert len(pauses) == 3
    assert asked == [job.id, job.id]  # the first check, and the one after the empty pause


def test_ordered_outputs_follows_part_numbers() -> None:
    def out(i: str, name: str, input_id: str) -> m.Output:
        return m.Output(id=i, input_id=input_id, data=m.DataRef(ref="/x", filename=name))

    shuffled = [
        out("o1", "pred_b_part_10.csv", "inp_b"),
        out("o2", "pred_a_part_2.csv", "inp_a"),
        out("o3", "pred_b_part_9.csv", "inp_b"),
        out("o4", "pred_a_part_0.csv", "inp_a"),
    ]
    names = [o.data.filename for o in ordered_outputs(shuffled)]
    assert names == [
        "pred_a_part_0.csv",
        "pred_a_part_2.csv",
        "pred_b_part_9.csv",
        "pred_b_part_10.csv",
    ]


def test_journal_is_durable_and_keeps_no_secrets(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j" / "journal.jsonl")
    first = JournalEntry("job_1", "a", "http://127.0.0.1:1/v0.5", "h1", "nb.ipynb", "cell-1")
    journal.record(first)
    journal.record(JournalEntry("job_2", "b", "http://127.0.0.1:1/v0.5", "h2", "other.ipynb"))
    journal.record(JournalEntry("job_3", "a", "http://127.0.0.1:1/v0.5", "h1", "nb.ipynb"))
    with journal.path.open("a") as file:
        file.write('{"job_id": "torn')  # a crash in the middle of a line
    assert [e.job_id for e in journal.entries()] == ["job_1", "job_2", "job_3"]
    journal.record(JournalEntry("job_4", "d", "http://127.0.0.1:1/v0.5", "h4"))
    other_kernel = Journal(journal.path)
    other_kernel.record(JournalEntry("job_5", "e", "http://127.0.0.1:1/v0.5", "h5"))
    ids = [e.job_id for e in journal.entries()]
    assert ids == ["job_1", "job_2", "job_3", "job_4", "job_5"]  # the torn line is skipped
    assert [e.job_id for e in other_kernel.entries()] == ids
    assert journal.find(endpoint="http://127.0.0.1:1/v0.5", spec_hash="h1").job_id == "job_3"
    assert journal.find(endpoint="https://elsewhere/v0.5", spec_hash="h1") is None
    notebook = journal.for_notebook("nb.ipynb", endpoint="http://127.0.0.1:1/v0.5")
    assert [e.job_id for e in notebook] == ["job_3", "job_1"]
    assert journal.path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(journal.path.read_text().splitlines()[0])) == {
        "job_id",
        "name",
        "endpoint",
        "spec_hash",
        "notebook",
        "cell",
        "submitted_at",
    }


def _entry(job_id: str, spec_hash: str = "h") -> JournalEntry:
    return JournalEntry(job_id, job_id, "http://127.0.0.1:1/v0.5", spec_hash)


def test_a_journal_removed_or_replaced_is_read_afresh(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record(_entry("job_1"))
    journal.record(_entry("job_2"))
    assert [e.job_id for e in journal.entries()] == ["job_1", "job_2"]
    journal.path.unlink()
    Journal(journal.path).record(_entry("job_3"))  # another kernel starts a new file
    assert [e.job_id for e in journal.entries()] == ["job_3"]
    journal.record(_entry("job_4"))
    assert [e.job_id for e in journal.entries()] == ["job_3", "job_4"]
    replacement = tmp_path / "restored.jsonl"
    Journal(replacement).record(_entry("job_5"))
    replacement.replace(journal.path)  # restored from a backup: another file, shorter
    assert [e.job_id for e in journal.entries()] == ["job_5"]
    assert journal.find(endpoint="http://127.0.0.1:1/v0.5", spec_hash="h").job_id == "job_5"


def test_a_short_write_on_a_full_disk_raises_and_tears_nothing_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record(_entry("job_1"))
    real_write = os.write
    calls: list[int] = []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:10])  # part of the line fits ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... the rest does not

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        journal.record(_entry("job_2"))
    monkeypatch.setattr(os, "write", real_write)
    journal.record(_entry("job_3"))
    assert [e.job_id for e in Journal(journal.path).entries()] == ["job_1", "job_3"]
    assert [e.job_id for e in journal.entries()] == ["job_1", "job_3"]


def test_a_journal_rewritten_under_the_same_inode_is_read_afresh(tmp_path: Path) -> None:
    """A filesystem may give a new journal the inode of the one removed before it: the first
    bytes tell them apart (here the file is rewritten in place, which keeps its inode)."""
    journal = Journal(tmp_path / "journal.jsonl")
    for n in range(3):
        journal.record(_entry(f"job_old{n}"))
    assert len(journal.entries()) == 3
    other = Journal(tmp_path / "other.jsonl")
    for n in range(5):
        other.record(_entry(f"job_new{n}"))
    inode = journal.path.stat().st_ino
    with journal.path.open("r+b") as file:
        file.write(other.path.read_bytes())
        file.truncate()
    assert journal.path.stat().st_ino == inode
    assert [e.job_id for e in journal.entries()] == [f"job_new{n}" for n in range(5)]
