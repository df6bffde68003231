"""What the magics do, without IPython: connect, validate, submit, wait, attach.

``magics.py`` only parses the line and calls into a ``Session``, so all of this runs (and is
tested) in a plain ``InteractiveShell`` or none at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import shlex
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .api.errors import ApiError, AtaiError, ConfigError, CreateInterrupted, NotFound
from .config import Settings

if TYPE_CHECKING:  # loaded on first use, so that %load_ext stays cheap
    from .api.client import Client
    from .jobs import Job, Journal, JournalEntry
    from .spec import ClientResolver
    from .ui.card import JobCard

__all__ = [
    "CellOptions",
    "JobFailed",
    "OptionsError",
    "Session",
    "extension_session",
    "parse_cell_options",
    "parse_jobs_options",
]

Print = Callable[[str], None]
SETTLE_BEFORE, SETTLE_AFTER = timedelta(minutes=2), timedelta(minutes=10)
"""Around a pending entry's time, where its job's ``created_at`` may fall: clock skew before,
the create's timeout and retries after."""
SETTLE_SCAN = 500
"""Jobs of the entry's name looked at when settling it."""
CONNECTION_SETTINGS = frozenset(
    {"endpoint", "api_key_env", "local_home", "local_concurrency", "max_retries"}
)


class OptionsError(AtaiError):
    """The magic's line has an option it does not know, or a bad value."""


class JobFailed(AtaiError):
    """A job waited for ended FAILED or CANCELLED; the cell fails so CI notices."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel
        raise OptionsError(f"{message}\nusage: {self.format_usage().strip()[7:]}")


def _words(line: str) -> list[str]:
    """A magic's line split as a shell would, or an OptionsError."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise OptionsError(f"cannot read the options: {exc}") from None


@functools.cache
def _job_parser() -> _Parser:
    parser = _Parser(prog="%%atai_job", add_help=False)
    parser.add_argument("var", nargs="?", help="variable that receives the Job handle")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--poll", type=float)
    parser.add_argument("--no-card", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    return parser


@functools.cache
def _jobs_parser() -> _Parser:
    parser = _Parser(prog="%atai_jobs", add_help=False)
    parser.add_argument("--status")
    parser.add_argument("--pipeline")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--search")
    return parser


def parse_jobs_options(line: str) -> dict[str, Any]:
    """The options of ``%atai_jobs [--status S] [--pipeline KEY] [--limit N] [--search Q]``."""
    args = vars(_jobs_parser().parse_args(_words(line)))
    if args["status"]:
        args["status"] = args["status"].upper()
    if not 1 <= args["limit"] <= 1000:
        raise OptionsError("--limit must be between 1 and 1000")
    return args


@dataclass(frozen=True)
class CellOptions:
    var: str | None = None
    dry_run: bool = False
    wait: bool = False
    timeout: float | None = None
    poll: float | None = None
    no_card: bool = False
    force: bool = False
    quiet: bool = False


@functools.lru_cache(maxsize=128)  # cells are re-run with the same line; errors aren't cached
def parse_cell_options(line: str) -> CellOptions:
    """The options of ``%%atai_job [VAR] [--dry-run] [--wait] ...``."""
    args = _job_parser().parse_args(_words(line))
    if args.var is not None and not args.var.isidentifier():
        raise OptionsError(f"{args.var!r} is not a valid variable name")
    return CellOptions(**vars(args))


class Session:
    """The extension's connection to one backend, made on first use."""

    def __init__(self, settings: Settings, *, say: Print = print) -> None:
        self.settings = settings
        self.say = say
        self._client: Client | None = None
        self._resolver: ClientResolver | None = None
        self._local: Future[Any] | None = None
        self._journal: Journal | None = None
        self._lock = threading.Lock()

    # --- the backend ------------------------------------------------------------------------

    def announce(self) -> str:
        """One line saying which backend the magics use (and how to switch)."""
        backend = self.settings.backend()
        if backend.is_local:
            return (
                "atai_magics: using the embedded LOCAL backend (no ATAI_API_KEY set); "
                "set ATAI_API_KEY to use the Archetype AI platform."
            )
        where = backend.endpoint or "the Archetype AI platform"
        return f"atai_magics: using {where} (key from ${backend.key_env})."

    def start_local_in_background(self) -> None:
        """Begin starting the local backend now, so the first cell does not wait for it."""
        if not self.settings.backend().is_local or self._local is not None:
            return
        future: Future[Any] = Future()
        self._local = future

        def start() -> None:
            try:
                from .local import server

                future.set_result(
                    server.start(
                        self.settings.local_home, concurrency=self.settings.local_concurrency
                    )
                )
            except BaseException as exc:  # surfaced to the first cell that needs it
                future.set_exception(exc)

        threading.Thread(target=start, name="atai-local-start", daemon=True).start()

    @property
    def client(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Client:
        from .api.client import Client

        backend = self.settings.backend()
        if not backend.is_local:
            import os

            key_env = backend.key_env or "ATAI_API_KEY"
            return Client(
                backend.endpoint,
                api_key=os.environ.get(key_env) or None,
                max_retries=self.settings.max_retries,
            )
        self.start_local_in_background()
        assert self._local is not None
        try:
            info = self._local.result(timeout=60)
        except Exception as exc:
            self._local = None
            raise ConfigError(f"The local backend could not start: {exc}") from None
        return Client(info.url, api_key=info.token(), max_retries=self.settings.max_retries)

    @property
    def endpoint(self) -> str:
        return self.client.base_url

    @property
    def connected_endpoint(self) -> str | None:
        """The API root in use, without connecting (None before the first use)."""
        return self._client.base_url if self._client is not None else None

    @property
    def backend_label(self) -> str:
        """``LOCAL`` for the embedded backend, else the API host."""
        from .ui.view import backend_label

        return backend_label(self.endpoint)

    @property
    def resolver(self) -> ClientResolver:
        if self._resolver is None:
            from .spec import ClientResolver

            self._resolver = ClientResolver(self.client)
        return self._resolver

    @property
    def journal(self) -> Journal:
        """The journal of the current settings (kept, so it is read incrementally)."""
        from .jobs import Journal

        path = self.settings.journal_path()
        if self._journal is None or self._journal.path != path:
            self._journal = Journal(path)
        return self._journal

    def change(self, name: str, value: Any) -> None:
        """Change a setting; the next use reconnects if it changes the connection.

        The old client is not closed: Job handles made with it keep working.
        """
        self.settings.set(name, value)
        if name in CONNECTION_SETTINGS:
            self.reset()

    def reset(self) -> None:
        """Forget the connection, so the next use connects with the current settings."""
        with self._lock:
            self._client = None
            self._resolver = None
            self._local = None

    # --- the cell ---------------------------------------------------------------------------

    def run_cell(
        self,
        cell: str,
        options: CellOptions,
        namespace: Mapping[str, Any],
        *,
        notebook: str | None = None,
        cell_id: str | None = None,
    ) -> Job | dict[str, Any]:
        """Validate, then (unless a dry run) submit, or re-attach to this cell's live job.

        Returns the exact JSON body for a dry run, else the Job handle. Nothing is sent
        when the cell is invalid: every check happens before the create request.
        """
        from .jobs import REFUSED, Job, JournalEntry
        from .spec import parse_cell, validate_request

        spec = parse_cell(cell, namespace)
        request = validate_request(spec, self.resolver)  # sent as it is: not validated twice
        if options.dry_run:
            return request.to_body()
        spec_hash = spec.spec_hash
        journal = self.journal
        job = None if options.force else self._live_job_of(spec_hash, journal)
        if job is not None:
            self._note(
                options,
                f"Attached to live job {job.id} submitted from this unchanged cell "
                "(--force submits it again).",
            )
        else:
            client = self.client
            # Written before the POST (nothing is sent if it cannot be): a create whose
            # answer is lost is still known, and settled by name on the next run.
            pending = JournalEntry("", request.name, client.base_url, spec_hash, notebook, cell_id)
            journal.record(pending)
            interrupt: CreateInterrupted | None = None
            try:
                record = client.create_job(request)
            except CreateInterrupted as exc:  # Ctrl-C while the POST was out
                if exc.job is None:
                    self.say("\nInterrupted while submitting: no job was created.")
                    raise
                interrupt, record = exc, exc.job
            except ApiError as exc:
                if exc.method == "POST" and 400 <= exc.status_code < 500:
                    # the create itself was refused: no job, nothing to look for later
                    self._journal_id(journal, pending, REFUSED)
                raise
            self._journal_id(journal, pending, record.id)
            job = Job(record, client)
            if interrupt is not None:  # journaled, then cancelled: never a stray live job
                self.interrupted(job, " while submitting")
                raise interrupt
            if not options.quiet:
                self.say(f"Submitted {record.name!r} to {self.backend_label}:")
                self.say(record.id)
        return job

    def _journal_id(self, journal: Journal, pending: JournalEntry, job_id: str) -> None:
        """Complete a pending entry; if the journal cannot be written now, the pending entry
        still finds the job, so the cell goes on."""
        from .jobs import REFUSED

        try:
            journal.record(dataclasses.replace(pending, job_id=job_id))
        except OSError as exc:
            if job_id == REFUSED:  # then a later lookup finds no job: the same end
                return
            self.say(
                f"Warning: the journal could not record job {job_id} ({exc}); a re-run of "
                "this cell finds the job by its name."
            )

    def _live_job_of(self, spec_hash: str, journal: Journal | None = None) -> Job | None:
        if journal is None:
            journal = self.journal
        entry = journal.find(endpoint=self.endpoint, spec_hash=spec_hash)
        if entry is not None and entry.pending:
            entry = self.settle(entry, journal)
        if entry is None or entry.refused:
            return None
        from .jobs import Job

        try:
            job = Job.attach(entry.job_id, self.client)
        except NotFound:
            return None
        return None if job.done else job

    def settle(self, entry: JournalEntry, journal: Journal | None = None) -> JournalEntry | None:
        """A pending entry's job: the earliest job of its name created around its
        ``submitted_at`` that no other entry of the journal names (and then journaled); None
        when there is none, journaled as such once no such job can still appear."""
        from .jobs import REFUSED

        journal = journal or self.journal
        if not entry.name:
            return None
        try:  # written by format_timestamp: RFC 3339 with a Z
            sent = datetime.fromisoformat(entry.submitted_at.removesuffix("Z") + "+00:00")
        except ValueError:
            return None
        since, until = sent - SETTLE_BEFORE, sent + SETTLE_AFTER
        journaled = {e.job_id for e in journal.entries()}
        made = [
            job
            for job in itertools.islice(self.client.iter_jobs(q=entry.name), SETTLE_SCAN)
            if job.name == entry.name
            and job.id not in journaled
            and job.created_at
            and since <= job.created_at <= until
        ]
        if not made:
            if datetime.now(timezone.utc) > until:
                self._journal_id(journal, entry, REFUSED)
            return None
        found = min(made, key=lambda job: job.created_at or since)
        self._journal_id(journal, entry, found.id)
        return dataclasses.replace(entry, job_id=found.id)

    def _note(self, options: CellOptions, text: str) -> None:
        if not options.quiet:
            self.say(text)

    def wait(self, job: Job, options: CellOptions) -> Job:
        """Block until the job ends; Ctrl-C cancels the remote job and re-raises."""
        from .jobs import JobTimeout

        timeout = options.timeout if options.timeout is not None else self.settings.timeout
        interactive = sys.stdout.isatty()
        last: list[str] = []

        def progress(j: Job) -> None:
            line = _progress_line(j)
            if interactive and not options.quiet and line not in last:
                sys.stdout.write("\r" + line.ljust(72))
                sys.stdout.flush()
                last[:] = [line]

        try:
            job.wait(timeout=timeout, poll=options.poll or self.settings.poll, on_change=progress)
        except KeyboardInterrupt:
            self.interrupted(job)
            raise
        except JobTimeout:
            raise JobFailed(
                f"Job {job.id} is still {job.status.value} after {timeout} s; it keeps running "
                f"(attach with `%atai_job attach {job.id}`)."
            ) from None
        if interactive and last:
            sys.stdout.write("\n")
        self._note(options, f"Finished: {job.summary}.")
        if job.status.value in ("FAILED", "CANCELLED"):
            raise JobFailed(_failure_text(job))
        return job

    def interrupted(self, job: Job, when: str = "") -> None:
        """Ctrl-C in a cell: cancel its job and say so. A cancel that fails is said, not
        raised, so the interrupt is what the cell ends with."""
        try:
            outcome = job.cancel()
        except AtaiError as exc:
            outcome = f"could not be cancelled ({exc})"
        self.say(f"\nInterrupted{when}: job {job.id} {outcome}.")

    def card(self, job: Job) -> JobCard:
        """A live card for the job, watched by the kernel's watcher at the ``poll`` interval."""
        from . import ui
        from .watch import default_watcher

        default_watcher().interval = self.settings.poll
        return ui.card_for(job, show=False)

    # --- line commands ----------------------------------------------------------------------

    def attach(self, job_id: str) -> Job:
        from .jobs import Job

        return Job.attach(job_id, self.client)

    def notebook_jobs(self, notebook: str | None) -> list[JournalEntry]:
        """This notebook's journaled jobs, newest first; a pending entry (a create whose
        answer was lost) is settled first, and left out when it made no job."""
        entries = self.journal.for_notebook(notebook, endpoint=self.endpoint)
        settled = (self._settled_or_kept(e) if e.pending else e for e in entries)
        return [e for e in settled if e is not None]

    def _settled_or_kept(self, entry: JournalEntry) -> JournalEntry | None:
        """For a listing: a lookup that fails keeps the pending entry (shown unconfirmed)."""
        try:
            return self.settle(entry)
        except AtaiError:
            return entry


def _progress_line(job: Job) -> str:
    counts = job.record.input_progress
    done = f" inputs {counts.completed + counts.failed}/{counts.total}" if counts else ""
    return f"{job.id}: {job.summary}{done}"


def _failure_text(job: Job) -> str:
    error = job.record.error
    detail = ""
    if isinstance(error, dict):
        detail = str(error.get("message") or json.dumps(error))
    elif error:
        detail = str(error)
    head = f"Job {job.name!r} ended {job.status.value}"
    return f"{head}: {detail}\n{job.id}" if detail else f"{head}\n{job.id}"


_standalone: list[Session] = []
_standalone_lock = threading.Lock()


def extension_session(*, load: bool = True) -> Session:
    """The session of the loaded ``%load_ext atai_magics`` (loaded first when IPython runs and
    ``load``), else one session of this process's own, made from the usual settings.

    Helper widgets made without a client use it, so they talk to the backend the cells use.
    ``load=False`` for background threads, which must not register magics or print.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    else:
        shell = get_ipython()
    registry = getattr(getattr(shell, "magics_manager", None), "registry", {})
    if shell is not None and load and "AtaiMagics" not in registry:
        shell.extension_manager.load_extension("atai_magics")
    magics = registry.get("AtaiMagics")
    if magics is not None:
        session: Session = magics.session
        return session
    with _standalone_lock:
        if not _standalone:
            from .config import load_pyproject_settings

            settings = Settings()
            load_pyproject_settings(settings)
            _standalone.append(Session(settings))
        return _standalone[0]
