"""``%%atai_job`` in a real InteractiveShell, against the real local backend over a socket."""

from __future__ import annotations

import _thread
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from atai_magics import session as session_module
from atai_magics.api import models as m
from atai_magics.api.errors import AmbiguousCreateError, InvalidRequest
from atai_magics.jobs import Job
from atai_magics.magics import AtaiMagics
from atai_magics.session import JobFailed, OptionsError
from atai_magics.spec import SpecError
from tests.conftest import LocalBackend


@pytest.fixture
def shell(
    local_backend: LocalBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ipython: Any,
) -> Iterator[Any]:
    """A shell with fresh magics bound to the session's backend and a private journal."""
    monkeypatch.delenv("ATAI_API_KEY", raising=False)
    monkeypatch.delenv("ATAI_API_ENDPOINT", raising=False)
    monkeypatch.delenv("ATAI_MAGICS_WAIT", raising=False)
    ip = ipython
    magics = AtaiMagics(ip)
    magics.session.settings.local_home = str(local_backend.info.home)
    magics.session.settings.journal = str(tmp_path / "journal.jsonl")
    ip.register_magics(magics)
    ip.user_ns["magics"] = magics
    yield ip
    client = magics.session.client
    for status in ("PENDING", "ADMITTED", "RUNNING"):  # free the shared backend's slots
        for job in client.iter_jobs(status=status):
            if job.pipeline_key == "slow-test":
                client.cancel_job(job.id)
    magics.session.reset()


def _files(client: Any, tag: str) -> tuple[str, str, str]:
    saw = "ts,x\n" + "".join(f"{i},{i % 5}\n" for i in range(80))
    ramp = "ts,x\n" + "".join(f"{i},{i / 80:.4f}\n" for i in range(80))
    names = (f"saw-{tag}.csv", f"ramp-{tag}.csv", f"inf-{tag}.csv")
    for name, text in zip(names, (saw, ramp, ramp), strict=True):
        client.upload_bytes(text.encode(), name)
    return names


def _cell(tag: str, window: str = "{{ win }}") -> str:
    return f"""name: magic-{tag}
pipeline: machine-state-classification
inputs:
  worker.inference: [inf-{tag}.csv]
  worker.n_shots:
    - {{file_id: saw-{tag}.csv, class: saw}}
    - {{file_id: ramp-{tag}.csv, class: ramp}}
config:
  reader_config:
    data_columns: {{{{ columns }}}}
    timestamp_column: ts
    window_size: {window}
    step_size: 1
"""


def _jobs_named(client: Any, name: str) -> list[m.JobRecord]:
    return [j for j in client.iter_jobs(q=name) if j.name == name]


def test_a_cell_submits_waits_and_binds_var(
    shell: Any, capsys: Any, local_backend: LocalBackend
) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    _files(client, tag)
    shell.user_ns.update(win=8, columns=["x"])
    creates = local_backend.handled("create_job")
    shell.run_cell_magic("atai_job", "job --wait", _cell(tag))
    job = shell.user_ns["job"]
    assert isinstance(job, Job) and job.status == m.JobStatus.COMPLETED
    out = capsys.readouterr().out
    assert f"Submitted 'magic-{tag}' to LOCAL:\n{job.id}\n" in out
    assert "Finished: completed." in out
    sent = client.get_job(job.id).parameters["worker"].config["reader_config"]
    assert local_backend.handled("create_job") == creates + 1
    assert sent == {
        "data_columns": ["x"],
        "timestamp_column": "ts",
        "window_size": 8,
        "step_size": 1,
    }


def test_dry_run_sends_no_job(shell: Any, capsys: Any, local_backend: LocalBackend) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    _files(client, tag)
    shell.user_ns.update(win=16, columns=["x"])
    creates = local_backend.handled("create_job")
    result = shell.run_cell_magic("atai_job", "dry_job --dry-run", _cell(tag))
    assert result is None and "dry_job" not in shell.user_ns
    out = capsys.readouterr().out
    assert '"window_size": 16' in out and '"pipeline_type": "batch"' in out
    assert local_backend.handled("create_job") == creates
    assert _jobs_named(client, f"magic-{tag}") == []


def test_a_bad_cell_fails_with_its_line_and_sends_nothing(
    shell: Any, local_backend: LocalBackend
) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    _files(client, tag)
    shell.user_ns.update(columns=["x"])
    creates = local_backend.handled("create_job")
    with pytest.raises(SpecError) as info:
        shell.run_cell_magic("atai_job", "", _cell(tag, window="{{ windw }}"))
    assert "line 12" in str(info.value) and "did you mean" in str(info.value)
    assert local_backend.handled("create_job") == creates
    assert _jobs_named(client, f"magic-{tag}") == []
    with pytest.raises(OptionsError):
        shell.run_cell_magic("atai_job", "--wiat", _cell(tag))


def _slow_cell(tag: str, seconds: int = 600) -> str:
    return f"""name: slow-{tag}
pipeline: slow-test
inputs:
  worker.data: [slow-{tag}.txt]
config:
  seconds: {seconds}
"""


def _slow_setup(shell: Any) -> tuple[Any, Any, str]:
    """The session, its client and a fresh tag whose slow-test input is uploaded; cells do
    not wait."""
    session = shell.user_ns["magics"].session
    tag = uuid.uuid4().hex[:8]
    session.client.upload_bytes(b"x", f"slow-{tag}.txt")
    shell.run_line_magic("atai_config", "wait=never")
    return session, session.client, tag


def test_a_create_whose_answer_was_lost_is_found_by_the_rerun_not_made_twice(
    shell: Any, capsys: Any, local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The POST reached the backend, but its answer never reached the journal (the kernel
    died, the connection broke): the pending entry written before it finds the job."""
    session, client, tag = _slow_setup(shell)
    shell.run_cell_magic("atai_job", "earlier", _slow_cell(tag))  # the same cell, run before
    earlier = shell.user_ns["earlier"]
    earlier.cancel()  # ended: the next run submits again
    create_job = client.create_job

    def answer_lost(request: Any) -> Any:
        create_job(request)  # the job is made on the backend ...
        raise AmbiguousCreateError("the connection broke")  # ... and its answer is lost

    monkeypatch.setattr(client, "create_job", answer_lost)
    creates = local_backend.handled("create_job")
    with pytest.raises(AmbiguousCreateError):
        shell.run_cell_magic("atai_job", "lost", _slow_cell(tag))
    monkeypatch.setattr(client, "create_job", create_job)
    [made] = [j for j in _jobs_named(client, f"slow-{tag}") if j.id != earlier.id]
    ids = [e.job_id for e in session.journal.entries()]
    assert ids == ["", earlier.id, ""]  # the last is pending: no id came back
    listed = [e.job_id for e in session.notebook_jobs(None)]
    assert listed == [made.id, earlier.id]  # settled by name, never to the earlier job

    shell.run_cell_magic("atai_job", "again", _slow_cell(tag))
    assert shell.user_ns["again"].id == made.id
    assert f"Attached to live job {made.id}" in capsys.readouterr().out
    assert local_backend.handled("create_job") == creates + 1
    assert len(_jobs_named(client, f"slow-{tag}")) == 2
    shell.user_ns["again"].cancel()


def test_a_create_the_api_refused_leaves_nothing_to_look_for(
    shell: Any, local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, client, tag = _slow_setup(shell)
    create_job, iter_jobs = client.create_job, client.iter_jobs

    def refused(method: str) -> Any:
        def create(request: Any) -> Any:
            raise InvalidRequest(400, "the org's quota is used up", method=method, url="/x")

        return create

    monkeypatch.setattr(client, "create_job", refused("POST"))  # the create itself: no job
    with pytest.raises(InvalidRequest):
        shell.run_cell_magic("atai_job", "never", _slow_cell(tag))
    assert [e.job_id for e in session.journal.entries()] == ["", "-"]  # pending, refused
    monkeypatch.setattr(client, "create_job", refused("GET"))  # a lookup after an ambiguous
    with pytest.raises(InvalidRequest):  # create: the job may exist, the entry stays pending
        shell.run_cell_magic("atai_job", "unknown", _slow_cell(tag))
    assert [e.job_id for e in session.journal.entries()] == ["", "-", ""]
    monkeypatch.setattr(client, "create_job", create_job)

    lookups: list[Any] = []
    monkeypatch.setattr(client, "iter_jobs", lambda **query: lookups.append(query) or iter(()))
    assert session.notebook_jobs(None) == [] and len(lookups) == 1  # only the pending one
    monkeypatch.setattr(session_module, "SETTLE_AFTER", timedelta(seconds=-1))
    assert session.notebook_jobs(None) == []  # its window has passed: journaled as no job
    assert [e.job_id for e in session.journal.entries()][-1] == "-"
    assert session.notebook_jobs(None) == [] and len(lookups) == 2  # nothing left to look for
    monkeypatch.setattr(client, "iter_jobs", iter_jobs)
    shell.run_cell_magic("atai_job", "made", _slow_cell(tag))  # submitted, not "attached"
    assert shell.user_ns["made"].status != m.JobStatus.CANCELLED
    shell.user_ns["made"].cancel()


def test_a_journal_that_cannot_be_written_sends_nothing_then_only_warns(
    shell: Any, capsys: Any, local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, _, tag = _slow_setup(shell)
    journal = session.journal
    record = journal.record
    writes: list[str] = []

    def full_disk_from(write: int) -> Any:
        def attempt(entry: Any) -> None:
            writes.append(entry.job_id)
            if len(writes) >= write:
                raise OSError(28, "No space left on device")
            record(entry)

        return attempt

    creates = local_backend.handled("create_job")
    monkeypatch.setattr(journal, "record", full_disk_from(1))
    with pytest.raises(OSError, match="No space left"):  # the pending entry: nothing is sent
        shell.run_cell_magic("atai_job", "never", _slow_cell(tag))
    assert local_backend.handled("create_job") == creates and "never" not in shell.user_ns

    writes.clear()
    monkeypatch.setattr(journal, "record", full_disk_from(2))  # the entry with the id fails
    shell.run_cell_magic("atai_job", "made", _slow_cell(tag))
    made = shell.user_ns["made"]
    assert f"the journal could not record job {made.id}" in capsys.readouterr().out
    monkeypatch.setattr(journal, "record", record)
    shell.run_cell_magic("atai_job", "again", _slow_cell(tag))  # found by its pending entry
    assert shell.user_ns["again"].id == made.id
    assert local_backend.handled("create_job") == creates + 1
    made.cancel()


def test_rerun_of_an_unchanged_live_cell_attaches(shell: Any, capsys: Any) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    shell.run_line_magic("atai_config", "wait=never")
    shell.run_cell_magic("atai_job", "first", _slow_cell(tag))
    shell.run_cell_magic("atai_job", "second", _slow_cell(tag))
    first, second = shell.user_ns["first"], shell.user_ns["second"]
    assert first.id == second.id
    assert f"Attached to live job {first.id}" in capsys.readouterr().out
    shell.run_cell_magic("atai_job", "third --force", _slow_cell(tag))
    third = shell.user_ns["third"]
    assert third.id != first.id
    assert len(_jobs_named(client, f"slow-{tag}")) == 2
    for job in (first, third):
        job.cancel()


def test_ctrl_c_while_waiting_cancels_the_remote_job(
    shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    # The job can run before the cell is done submitting (journal, output): Ctrl-C counts
    # as "while waiting" only once the cell is in Job.wait.
    waiting = threading.Event()
    wait = Job.wait

    def observed_wait(self: Job, *args: Any, **kwargs: Any) -> Job:
        waiting.set()
        return wait(self, *args, **kwargs)

    monkeypatch.setattr(Job, "wait", observed_wait)

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = _jobs_named(client, f"slow-{tag}")
            if waiting.is_set() and jobs and jobs[0].status == m.JobStatus.RUNNING:
                _thread.interrupt_main()
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("atai_job", "job --wait --poll 0.1 --timeout 90", _slow_cell(tag))
    (job,) = _jobs_named(client, f"slow-{tag}")
    assert job.status == m.JobStatus.CANCELLED
    assert shell.user_ns["job"].id == job.id  # VAR is bound even though the cell failed


def test_ctrl_c_while_submitting_cancels_the_job_the_create_made(
    shell: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands just as the create's answer comes back (the job exists, the cell has not
    heard of it): the job is looked up, journaled and cancelled, so a rerun is not a twin."""
    session = shell.user_ns["magics"].session
    client = session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    transport = client._http._transport
    send = transport.handle_request

    def interrupted_create(request: Any) -> Any:
        response = send(request)  # the real POST, over the socket, to the real backend
        if request.method == "POST" and request.url.path.endswith("/batch/jobs"):
            response.read()
            response.close()
            raise KeyboardInterrupt
        return response

    monkeypatch.setattr(transport, "handle_request", interrupted_create)
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("atai_job", f"job_{tag} --no-card", _slow_cell(tag))
    monkeypatch.undo()

    (job,) = _jobs_named(client, f"slow-{tag}")
    assert job.status == m.JobStatus.CANCELLED
    assert f"Interrupted while submitting: job {job.id} cancelled." in capsys.readouterr().out
    entries = session.journal.entries()
    assert [e.job_id for e in entries if e.name == f"slow-{tag}"] == ["", job.id]  # pending, id
    assert f"job_{tag}" not in shell.user_ns  # the cell failed before it had a handle to bind


def test_ctrl_c_before_the_wait_of_a_waiting_cell_cancels_too(
    shell: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a live notebook a waiting cell draws its card first: Ctrl-C then cancels as well."""
    session = shell.user_ns["magics"].session
    client = session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    monkeypatch.setattr("atai_magics._env.in_kernel", lambda shell: True)
    monkeypatch.setattr("atai_magics._env.has_live_frontend", lambda shell: True)

    def interrupted_card(job: Job) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while the card is being drawn

    monkeypatch.setattr(session, "card", interrupted_card)
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("atai_job", f"job_{tag} --wait", _slow_cell(tag))
    (job,) = _jobs_named(client, f"slow-{tag}")
    assert job.status == m.JobStatus.CANCELLED
    assert f"Interrupted: job {job.id} cancelled." in capsys.readouterr().out
    assert shell.user_ns[f"job_{tag}"].id == job.id


def test_a_failed_job_fails_the_cell(shell: Any) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    cell = _slow_cell(tag).replace("seconds: 600", "fail: deliberate failure")
    with pytest.raises(JobFailed, match="deliberate failure"):
        shell.run_cell_magic("atai_job", "job --wait", cell)
    assert shell.user_ns["job"].status == m.JobStatus.FAILED


def test_attach_after_a_restart_lists_the_journal(shell: Any, capsys: Any) -> None:
    client = shell.user_ns["magics"].session.client
    tag = uuid.uuid4().hex[:8]
    client.upload_bytes(b"x", f"slow-{tag}.txt")
    shell.run_line_magic("atai_config", "wait=never")
    shell.run_cell_magic("atai_job", "job", _slow_cell(tag))
    job_id = shell.user_ns["job"].id
    journal = shell.user_ns["magics"].session.settings.journal

    restarted = AtaiMagics(shell)  # a new kernel: nothing in memory but the journal on disk
    restarted.session.settings.local_home = shell.user_ns["magics"].session.settings.local_home
    restarted.session.settings.journal = journal
    shell.register_magics(restarted)
    shell.user_ns.pop("job")
    capsys.readouterr()
    shell.run_line_magic("atai_job", "attach")
    assert job_id in capsys.readouterr().out
    shell.run_line_magic("atai_job", f"attach {job_id} again")
    assert shell.user_ns["again"].id == job_id
    shell.run_line_magic("atai_job", f"cancel {job_id}")
    assert client.get_job(job_id).status == m.JobStatus.CANCELLED
    shell.run_line_magic("atai_job", f"status {job_id}")
    assert "cancelled" in capsys.readouterr().out
    restarted.session.reset()


def test_config_magic_and_atai_config_change_settings(shell: Any, capsys: Any) -> None:
    magics = shell.user_ns["magics"]
    shell.run_line_magic("config", "AtaiMagics.poll = 0.25")
    assert magics.session.settings.poll == 0.25
    shell.run_line_magic("atai_config", "timeout=30 wait=always")
    assert (magics.session.settings.timeout, magics.session.settings.wait) == (30.0, "always")
    out = capsys.readouterr().out
    assert "LOCAL (embedded)" in out and "timeout" in out and "30.0" in out
    with pytest.raises(Exception, match="did you mean 'timeout'"):
        shell.run_line_magic("atai_config", "timout=3")


def test_pipelines_and_files_magics(shell: Any, capsys: Any) -> None:
    shell.run_line_magic("atai_pipelines", "")
    listing = capsys.readouterr().out
    assert "machine-state-classification" in listing and "activity-detection" in listing
    assert shell.run_line_magic("atai_pipelines", "machine-state-classification") is None
    one = capsys.readouterr().out
    assert "worker.n_shots" in one and "window_size" in one  # ports and settings, as text

    chooser = shell.run_line_magic("atai_files", "machine-state-classification")
    chooser.wait_idle(60)
    assert chooser._client is shell.user_ns["magics"].session.client  # the cells' backend
    assert "machine-state-classification" in repr(chooser)
