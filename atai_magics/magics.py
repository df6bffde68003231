"""``%%atai_job``: run an Archetype AI batch job from a notebook cell.

Load with ``%load_ext atai_magics``. With no ``ATAI_API_KEY`` and no endpoint configured,
jobs go to the embedded LOCAL backend (started on demand); with ``ATAI_API_KEY`` set they go
to the Archetype AI platform (``ATAI_API_ENDPOINT`` chooses another deployment).

The cell
--------
The body is YAML (JSON is YAML too, so the API's create-job body pastes in unchanged)::

    %%atai_job job --wait
    name: pump-states
    pipeline: machine-state-classification      # or pipeline_key:, KEY@VERSION pins it
    inputs:
      worker.inference: [pump_day3.csv]          # a bare string is a file id
      worker.n_shots:
        - {file_id: normal.csv, class: normal}   # class -> metadata.class
        - {file_id: cavitation.csv, class: cavitation}
    config:                                       # the single component's config
      reader_config:
        data_columns: {{ channels }}              # exactly {{ x }}: the Python object
        timestamp_column: timestamp
        window_size: {{ window }}
        step_size: 1

``{{ name }}``, ``{{ name.attr }}`` and ``{{ name[0] }}`` read the notebook's variables; no
other code is evaluated. The cell is validated against the pipeline's schema before anything
is sent: an error names the line and column, shows a caret, and suggests the nearest valid
name. See ``atai_magics.spec`` for the whole format.

Options
-------
``%%atai_job [VAR] [--dry-run] [--wait] [--timeout S] [--poll S] [--no-card] [--force] [--quiet]``

- ``VAR``: the variable that receives the ``Job`` handle (also when the job fails).
- ``--dry-run``: validate, show the exact JSON body, send nothing.
- ``--wait``: block until the job ends (Ctrl-C cancels it); a FAILED or CANCELLED job fails
  the cell. Without a live notebook front end (terminal, nbconvert, nbval, papermill) cells
  wait by default; ``ATAI_MAGICS_WAIT=0/1`` or ``%atai_config wait=never/always`` overrides.
  Ctrl-C while any cell is still submitting cancels the job if the server made it (looked up
  and journaled first): an interrupted cell leaves no job running. The journal entry is
  written before the create request, so a create whose answer is lost (a dead kernel, a
  broken connection) is found by name when the cell runs again, never made twice.
- ``--timeout S``: give up waiting after S seconds (the job keeps running).
- ``--poll S``: seconds between status checks.
- ``--force``: submit even if this unchanged cell's job is still running (by default the
  cell re-attaches to it).
- ``--no-card``: text instead of the live card; ``--quiet``: no "Submitted" lines either.

The card
--------
In a notebook the cell returns at once with a live card (status, queue position, input
progress, latest progress message, events, warnings, error, outputs with Download, and
Cancel / Retry / Refresh). One background watcher per kernel keeps every card moving, also
while other cells run. When the job ends its final state is written below the card as text
and HTML, which a saved notebook keeps. ``atai_magics.ui.card_for(job)`` shows a card for any
``Job``.

Line commands
-------------
- ``%atai_job attach [JOB_ID] [VAR]``: the handle of an existing job; without an id, the
  jobs this notebook submitted (from the journal, so also after a kernel restart).
- ``%atai_job status JOB_ID``, ``%atai_job cancel JOB_ID``, ``%atai_job retry JOB_ID``.
- ``%atai_jobs [--status S] [--pipeline KEY] [--limit N] [--search Q]``: the org's jobs,
  newest first: a paged table with Open card / Cancel / Retry / Delete in a notebook.
- ``%atai_files [PIPELINE]``: a file chooser: list, search, filter and page the org's files,
  pick several and assign them to the pipeline's input ports (and n-shot classes), upload by
  path (streamed, with progress) or from the browser, delete; ``.value`` is a job's
  ``inputs``, ``.to_yaml()`` its YAML block.
- ``%atai_pipelines [KEY[@VERSION]]``: the published pipelines, or one pipeline's ports and
  settings, with a form (``atai_magics.ui.ParamsForm``) whose ``.to_cell()`` is a complete
  ``%%atai_job`` cell, checked against the same schema.
- ``%atai_config``: the effective settings (never the key); ``%atai_config name=value``
  changes one. Settings also come from ``%config AtaiMagics.<name>`` and from a
  ``[tool.atai_magics]`` table in the nearest ``pyproject.toml``.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display as _display
from traitlets import Float, Int, Unicode, observe

from . import _env
from .config import Settings, load_pyproject_settings
from .session import OptionsError, Session, parse_cell_options, parse_jobs_options

__all__ = ["AtaiMagics"]


def display(obj: Any, **kwargs: Any) -> None:
    _display(obj, **kwargs)  # type: ignore[no-untyped-call]


@magics_class
class AtaiMagics(Magics):
    """The ``%%atai_job`` and ``%atai_config`` magics; ``%config AtaiMagics.<name>`` works."""

    endpoint = Unicode(None, allow_none=True, help="API endpoint").tag(config=True)
    api_key_env = Unicode("ATAI_API_KEY", help="Variable holding the API key").tag(config=True)
    local_home = Unicode(None, allow_none=True, help="Local backend state dir").tag(config=True)
    local_concurrency = Int(2, help="Jobs the local backend runs at once").tag(config=True)
    poll = Float(1.0, help="Seconds between status checks").tag(config=True)
    max_retries = Int(3, help="Times a failed request is repeated").tag(config=True)
    timeout = Float(None, allow_none=True, help="Seconds --wait waits").tag(config=True)
    wait = Unicode("auto", help="auto, always or never").tag(config=True)
    journal = Unicode(None, allow_none=True, help="Journal path").tag(config=True)

    def __init__(self, shell: Any, **kwargs: Any) -> None:
        settings = Settings()
        load_pyproject_settings(settings)
        self.session = Session(settings)
        super().__init__(shell, **kwargs)  # %config values arrive through _setting_changed

    @property
    def _ns(self) -> dict[str, Any]:
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    @observe(*Settings.names())
    def _setting_changed(self, change: dict[str, Any]) -> None:
        self.session.change(change["name"], change["new"])

    @line_cell_magic
    def atai_job(self, line: str, cell: str | None = None) -> Any:
        if cell is None:
            return self._line_command(line)
        options = parse_cell_options(line)
        wait = _env.should_wait(self.shell, self.session.settings.wait, options.wait)
        result = self.session.run_cell(
            cell,
            options,
            self._ns,
            notebook=_env.notebook_name(self.shell),
            cell_id=_env.cell_id(self.shell),
        )
        if isinstance(result, dict):
            text = json.dumps(result, indent=2)
            display({"application/json": result, "text/plain": text}, raw=True)
            return None
        if options.var:
            self._ns[options.var] = result
        # A card where widgets can render: a live front end, or a kernel not waiting here.
        card = not options.no_card and _env.in_kernel(self.shell)
        card = card and (not wait or _env.has_live_frontend(self.shell))
        if card:
            try:
                self.session.card(result).show()
            except KeyboardInterrupt:
                if wait:  # Ctrl-C in a cell that was to wait cancels, even before the wait
                    self.session.interrupted(result)
                raise
        if wait:
            self.session.wait(result, options)
        if not card and not options.quiet:
            display(result)
        return None

    def _line_command(self, line: str) -> Any:
        words = shlex.split(line)
        if not words:
            raise OptionsError("usage: %atai_job attach|status|cancel|retry [JOB_ID] [VAR]")
        command, rest = words[0], words[1:]
        if command == "attach":
            if not rest:
                entries = self.session.notebook_jobs(_env.notebook_name(self.shell))
                if not entries:
                    print("No jobs in the journal for this notebook.")
                for entry in entries:
                    job_id = entry.job_id or "(unconfirmed: its create's answer was lost)"
                    print(f"{entry.submitted_at}  {job_id}  {entry.name}")
                return None
            job = self.session.attach(rest[0])
            if len(rest) > 1:
                self._ns[rest[1]] = job
            display(job)
            return None
        if command in ("status", "cancel", "retry") and len(rest) == 1:
            job = self.session.attach(rest[0])
            if command == "cancel":
                print(f"{job.id}: {job.cancel()}")
            elif command == "retry":
                job.retry()
            display(job)
            return None
        raise OptionsError(
            f"unknown command {' '.join(words)!r}; usage: "
            "%atai_job attach [JOB_ID] [VAR] | status JOB_ID | cancel JOB_ID | retry JOB_ID"
        )

    @line_magic
    def atai_jobs(self, line: str) -> None:
        """A table of the org's jobs: ``%atai_jobs [--status S] [--pipeline KEY] [--limit N]
        [--search Q]`` (a widget with row actions in a notebook, text elsewhere)."""
        from .ui.jobs_table import JobsQuery, show_jobs

        query = JobsQuery(**parse_jobs_options(line))
        show_jobs(self.session.client, query, widget=_env.has_live_frontend(self.shell))

    @line_magic
    def atai_files(self, line: str) -> Any:
        """Choose, upload and delete files: ``%atai_files [PIPELINE]``; ``.value`` is a job's
        ``inputs`` (listing and uploads run in the background)."""
        from .ui.files import FileChooser

        return FileChooser(pipeline=line.strip() or None)  # the session's client, in a thread

    @line_magic
    def atai_pipelines(self, line: str) -> Any:
        """The published pipelines, or ``%atai_pipelines KEY[@VERSION]``: one pipeline's ports
        and settings, and in a notebook a form that writes its ``%%atai_job`` cell."""
        from .ui.pipelines import pipelines_view

        key, _, version = line.strip().partition("@")
        display(pipelines_view(None, key or None, version or None))
        if key and _env.has_live_frontend(self.shell):
            from .ui.params import ParamsForm

            return ParamsForm(key, version=version or None)
        return None

    @line_magic
    def atai_config(self, line: str) -> None:
        """Show the effective settings, or change them: ``%atai_config poll=1 wait=always``."""
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            if not sep:
                raise OptionsError(f"expected name=value, not {word!r}")
            self.session.change(name, value)
        settings = self.session.settings
        backend = settings.backend()
        rows = {
            "backend": "LOCAL (embedded)" if backend.is_local else "platform",
            "api": self.session.connected_endpoint or "(connects on first use)",
            "key from": "<home>/token (local)" if backend.is_local else f"${backend.key_env}",
        }
        rows.update({name: repr(getattr(settings, name)) for name in Settings.names()})
        width = max(len(k) for k in rows)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows.items()))
