"""The parameter form: one widget per setting of a pipeline, checked as you type, that writes
(or submits) a complete ``%%atai_job`` cell.

Everything it knows lives in a `ParamsModel` (``ui.params_model``, no widgets); this module
only draws it and copies widget values into it. Defaults are prefilled, descriptions are the
tooltips, bounds are those of the schema (number boxes with a default clamp to them; a number
without a default is a text box, so "not set" can be told from a value, and an out-of-range
entry is reported rather than clamped). Problems show next to their field and in the status
line; Submit is enabled only when there are none.

"Insert cell below" uses IPython's ``set_next_input``. Front ends deliver it with the reply
to an executed cell, and a button click is not one: the new cell appears when the next cell
is run (the preview under the form can also be copied). "Submit" runs the cell through the
``%%atai_job`` magic (journal, card, the same checks) when the form uses the extension's
session; a form given its own ``client`` creates the job with that client directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w
from IPython import get_ipython
from traitlets import Bool, Unicode

from ..api.models import Port
from ..spec import ClientResolver, parse_cell, validate_request
from .params_model import Field, Group, ParamsModel, Path, Problem, Unparsed
from .pipelines import extension_session, load_model

if TYPE_CHECKING:
    from ..api.client import Client
    from ..jobs import Job
    from ..session import Session

__all__ = ["ParamsForm"]

_LABEL = {"description_width": "200px"}
_LABEL_WIDTH = "208px"  # the same column for rows that draw their own label
_WIDE = "420px"
_SAFE_INT = 2**53 - 1
_RED, _GREY, _GREEN = "#b91c1c", "#6b7280", "#15803d"


class _Editor:
    """One setting's widget, and how its value maps to the model's (None = not set)."""

    def __init__(self, field: Field) -> None:
        self.field = field
        self.read: Callable[[Any], Any] = lambda v: v
        self.shown: Callable[[Any], Any] = lambda v: v
        self.widget = self._widget(field)
        tip = "\n".join(filter(None, [field.description, field.summary()]))
        self.widget.tooltip = tip
        self.message = w.HTML()
        if isinstance(self.widget, w.TagsInput):  # it draws no description of its own
            self.row = w.HBox([_label(field.name), self.widget, self.message])
        else:
            self.widget.description, self.widget.style = field.name, _LABEL
            self.row = w.HBox([self.widget, self.message])

    def _widget(self, f: Field) -> w.DOMWidget:
        wide = w.Layout(width=_WIDE)
        if f.kind == "enum" or (f.kind == "boolean" and not f.has_default):
            choices = list(f.enum) if f.kind == "enum" else [True, False]
            options = [(_option(v), v) for v in choices]
            if not f.has_default:
                options.insert(0, ("(not set)", None))
            return w.Dropdown(options=options, layout=wide)
        if f.kind == "boolean":
            return w.Checkbox(indent=False)
        if f.kind in ("integer", "number") and f.has_default:
            low, high = _widget_bounds(f)
            cls = w.BoundedIntText if f.kind == "integer" else w.BoundedFloatText
            extra = {} if f.kind == "integer" else {"step": None}
            return cls(value=f.default, min=low, max=high, layout=wide, **extra)
        if f.kind in ("integer", "number"):
            self.read = lambda text: _number(text, f.kind)
            self.shown = lambda v: v.text if isinstance(v, Unparsed) else _text(v)
            return w.Text(placeholder=f.summary(), layout=wide)
        if f.kind == "strings":
            self.read = lambda tags: list(tags) or None
            self.shown = lambda v: list(v or [])
            return w.TagsInput(allow_duplicates=not f.unique_items, placeholder="add…")
        if f.kind == "json":
            self.read = _json
            self.shown = lambda v: v.text if isinstance(v, Unparsed) else _json_text(v)
            return w.Textarea(placeholder="JSON", rows=2, layout=wide)
        self.read = lambda text: text or None
        self.shown = lambda v: "" if v is None else v
        return w.Text(placeholder="not set", layout=wide)

    def show(self, value: Any) -> None:
        shown = self.shown(value)
        if self.widget.value != shown:
            self.widget.value = shown

    def mark(self, problem: Problem | None) -> None:
        if problem is not None:
            self.message.value = _span(problem.message, _RED)
        else:
            self.message.value = _span(self.field.summary(), _GREY)


class ParamsForm(w.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """A form for one pipeline's job; ``value`` is the ``parameters``, ``to_cell()`` the cell.

    ``client`` None uses the extension's session (loading the extension if needed).
    ``files``: an object whose ``.value`` is the job's ``inputs`` mapping (a file chooser);
    when given it replaces the per-port file boxes (and is shown, if it is a widget).
    """

    valid = Bool(False, help="whether the form is a valid job right now")
    notice = Unicode("", help="what the last button press did")

    def __init__(
        self,
        pipeline_key: str,
        client: Client | None = None,
        *,
        version: str | None = None,
        files: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._session: Session | None = None
        if client is None:
            self._session = extension_session()
            client, resolver = self._session.client, self._session.resolver
        else:
            resolver = ClientResolver(client)
        self.client = client
        self.resolver = resolver
        self.model: ParamsModel = load_model(resolver, pipeline_key, version)
        self.model.files = files
        if name:
            self.model.name = name
        self.job: Job | None = None
        """The handle of the last job Submit created (or re-attached to)."""
        self._editors = {f.path: _Editor(f) for f in self.model.fields}
        self._port_widgets: dict[str, w.DOMWidget] = {}
        self._port_msgs: dict[str, w.HTML] = {}
        super().__init__(children=self._children(files), **kwargs)
        self.add_class("atai-params-form")
        self.refresh()

    # --- drawing ----------------------------------------------------------------------------

    def _children(self, files: Any) -> list[w.Widget]:
        m = self.model
        header = w.HTML(
            f"<b>{_e(m.title)}</b> <code>{_e(m.pipeline)}</code>"
            f"<div style='color:{_GREY};font-size:85%;line-height:1.4'>"
            f"{_e(m.description or '')}</div>"
        )
        wide = w.Layout(width=_WIDE)
        self._name = w.Text(value=m.name, description="job name", style=_LABEL, layout=wide)
        self._var = w.Text(
            description="variable",
            placeholder="optional: bind the Job handle to this name",
            style=_LABEL,
            layout=w.Layout(width=_WIDE),
        )
        self._name_msg, self._var_msg = w.HTML(), w.HTML()
        self._name.observe(lambda _: self._set("name", self._name.value.strip()), names="value")
        self._var.observe(lambda _: self._set("var", self._var.value.strip()), names="value")
        rows: list[w.Widget] = [
            header,
            w.HBox([self._name, self._name_msg]),
            w.HBox([self._var, self._var_msg]),
            w.HTML("<b>Inputs</b>"),
            *self._input_rows(files),
            w.HTML("<b>Settings</b>"),
            *self._setting_rows(),
        ]
        for editor in self._editors.values():
            editor.show(m.state.get(editor.field.path))
            editor.widget.observe(lambda _, e=editor: self._edited(e), names="value")
        self._status = w.HTML()
        self._insert = w.Button(description="Insert cell below", icon="plus")
        self._submit = w.Button(description="Submit", button_style="primary", icon="play")
        self._insert.on_click(lambda _: self._press("Insert", self.insert_below))
        self._submit.on_click(lambda _: self._press("Submit", self.submit))
        self._notice = w.HTML()
        self._preview = w.HTML()
        self._output = w.Output()
        cell_box = w.Accordion(children=[self._preview], titles=("Cell",), selected_index=None)
        buttons = w.HBox([self._insert, self._submit, self._notice])
        return [*rows, self._status, buttons, cell_box, self._output]

    def _input_rows(self, files: Any) -> list[w.Widget]:
        if files is not None:
            if hasattr(files, "observe"):
                files.observe(lambda _: self.refresh(), names="value")
            if hasattr(files, "show_insert"):  # one "Insert cell below": the form's (whole cell)
                files.show_insert(False)
            return [files] if isinstance(files, w.Widget) else []
        rows = []
        for port, spec in self.model.ports.items():
            tip = "\n".join(filter(None, [spec.name, spec.description]))
            if spec.mode == "n_shot_file_list":
                box = w.Textarea(placeholder="one per line: file id, class", rows=3)
            else:
                box = w.TagsInput(allow_duplicates=False, placeholder="file id…")
            box.layout.width, box.tooltip = _WIDE, tip
            box.observe(lambda _, p=port: self._ports_edited(p), names="value")
            self._port_widgets[port] = box
            self._port_msgs[port] = w.HTML()
            rows.append(w.HBox([_label(port), box, self._port_msgs[port]]))
        return rows

    def _setting_rows(self) -> list[w.Widget]:
        m = self.model
        self._parallelism = {c: self._parallelism_box(c) for c in m.components}
        if len(m.components) == 1:
            (component,) = m.components
            return [*self._rows_under((component,)), self._parallelism[component]]
        return [
            _box(c, None, [*self._rows_under((c,)), self._parallelism[c]], opened=True)
            for c in m.components
        ]

    def _parallelism_box(self, component: str) -> w.BoundedIntText:
        default = self.model.default_parallelism[component]
        box = w.BoundedIntText(
            value=default,
            min=1,
            max=_SAFE_INT,
            description="parallelism",
            tooltip=f"Workers for {component} (the pipeline's default: {default}).",
            style=_LABEL,
            layout=w.Layout(width=_WIDE),
        )

        def changed(_: Any) -> None:
            self.model.parallelism[component] = box.value
            self.refresh()

        box.observe(changed, names="value")
        return box

    def _rows_under(self, parent: Path) -> list[w.Widget]:
        """Rows of the settings under ``parent``: required objects open, optional ones folded
        (an Accordion; its folded state is what front ends draw reliably on first render)."""
        rows: list[w.Widget] = []
        for entry in self.model.entries:
            if entry.path[:-1] != parent:
                continue
            if isinstance(entry, Group):
                children = self._rows_under(entry.path)
                title = entry.path[-1] + (" (required)" if entry.required else "")
                rows.append(_box(title, entry.description, children, opened=entry.required))
            else:
                rows.append(self._editors[entry.path].row)
        return rows

    # --- keeping the model in step ----------------------------------------------------------

    def _edited(self, editor: _Editor) -> None:
        self.model.state[editor.field.path] = editor.read(editor.widget.value)
        self.refresh()

    def _ports_edited(self, port: str) -> None:
        value = self._port_widgets[port].value
        if isinstance(value, str):  # n-shot lines: "file id, class"
            items: list[Any] = []
            for line in value.splitlines():
                file_id, comma, label = line.rpartition(",") if "," in line else (line, "", "")
                if file_id.strip():
                    item = {"file_id": file_id.strip(), "class": label.strip() or None}
                    items.append(item if comma else {"file_id": file_id.strip()})
            self.model.port_items[port] = items
        else:
            self.model.port_items[port] = list(value)
        self.refresh()

    def _set(self, attribute: str, value: str) -> None:
        setattr(self.model, attribute, value)
        self.refresh()

    def set(self, path: Path | str, value: Any) -> None:
        """Set a setting as a user would (through its widget: bounded boxes clamp); ``path``
        is a tuple or a dotted string, the component may be left out."""
        keys = tuple(path.split(".")) if isinstance(path, str) else path
        self._editors[self.model.field(keys).path].show(value)

    def reset(self) -> None:
        """Every setting back to its default (or not set); name and inputs are kept."""
        self.model.reset()
        for editor in self._editors.values():
            editor.show(self.model.state.get(editor.field.path))
        for component, box in self._parallelism.items():
            box.value = self.model.default_parallelism[component]
        self.refresh()

    def set_inputs(self, port: str, items: list[Any]) -> None:
        """Fill a port's box: file ids, or ``(file_id, class)`` pairs for an n-shot port."""
        box = self._port_widgets[port]
        if isinstance(box.value, str):
            box.value = "\n".join(i if isinstance(i, str) else f"{i[0]}, {i[1]}" for i in items)
        else:
            box.value = list(items)

    def refresh(self) -> None:
        """Re-check the state: messages by the fields, the status line, the preview."""
        problems = self.model.problems()

        def first(section: str, path: Path | None = None) -> Problem | None:
            return next(
                (p for p in problems if p.section == section and path in (None, p.path)), None
            )

        for path, editor in self._editors.items():
            editor.mark(first("config", path))
        for port, message in self._port_msgs.items():
            problem = first("inputs", (port,))
            hint = _span(_port_hint(self.model.ports[port]), _GREY)
            message.value = _span(problem.message, _RED) if problem else hint
        for section, message in (("name", self._name_msg), ("var", self._var_msg)):
            problem = first(section)
            message.value = _span(problem.message, _RED) if problem else ""
        self.valid = not problems
        self._submit.disabled = bool(problems)
        self._status.value = _status_html(problems)
        text = self.model.text()
        self._preview.value = f"<pre style='user-select:all;margin:0'>{_e(text)}</pre>"

    # --- what it makes ----------------------------------------------------------------------

    @property
    def value(self) -> dict[str, Any]:
        """The job's ``parameters``: component -> {config[, parallelism]}."""
        return self.model.value

    @property
    def problems(self) -> list[Problem]:
        return self.model.problems()

    def to_cell(self, *, check: bool = True) -> str:
        """The complete ``%%atai_job`` cell (see `ParamsModel.to_cell`)."""
        return self.model.to_cell(check=check)

    def insert_below(self) -> str:
        """Ask the front end to insert the cell below (its problems as comments, if any)."""
        cell = self.model.to_cell(check=False)
        shell = get_ipython()
        if shell is None:
            return "no IPython: print(form.to_cell()) and copy it"
        shell.set_next_input(cell, replace=False)
        return "the cell appears below the next non-empty cell you run (or copy it from Cell)"

    def submit(self) -> Job:
        """Create the job (see the module docstring for how); ``job`` keeps its handle."""
        body = self.model.to_cell().split("\n", 1)[1]  # ParamsInvalid if not a valid job
        shell = get_ipython()
        magics = shell.magics_manager.registry.get("AtaiMagics") if shell else None
        job: Job
        with self._output:
            self._output.clear_output()
            if self._session is not None and getattr(magics, "session", None) is self._session:
                var = self.model.var or f"_atai_params_job_{uuid.uuid4().hex[:8]}"
                shell.run_cell_magic("atai_job", var, body)
                job = shell.user_ns[var] if self.model.var else shell.user_ns.pop(var)
            else:
                job = self._create(body, shell)
        self.job = job
        return job

    def _create(self, body: str, shell: Any) -> Job:
        from ..jobs import Job
        from . import card_for

        request = validate_request(parse_cell(body), self.resolver)
        job = Job(self.client.create_job(request), self.client)
        if getattr(shell, "kernel", None) is not None:
            card_for(job)
        if self.model.var and shell is not None:
            shell.user_ns[self.model.var] = job
        return job

    def _press(self, label: str, action: Callable[[], Any]) -> None:
        """Run a button's action; say what happened on the form instead of raising."""
        try:
            outcome = action()
            text = f"{label}: {outcome if isinstance(outcome, str) else 'submitted ' + outcome.id}"
            colour = "#374151"
        except Exception as exc:  # a button has no caller to raise to
            text, colour = f"{label} failed: {exc}", _RED
        self.notice = text
        self._notice.value = _span(text, colour)

    # --- renderings -------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        bundle: dict[str, Any] | None = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle["text/plain"] = self.model.text()
        return bundle

    def __repr__(self) -> str:
        return self.model.text()


def _label(text: str) -> w.HTML:
    """A label in the description column, for widgets that draw none."""
    return w.HTML(
        f"<div style='text-align:right;padding-right:8px;white-space:nowrap;overflow:hidden;"
        f"text-overflow:ellipsis' title='{_e(text)}'>{_e(text)}</div>",
        layout=w.Layout(width=_LABEL_WIDTH, flex="0 0 auto"),
    )


def _port_hint(port: Port) -> str:
    hint = "required" if port.required else "optional"
    return hint + (", each file with a class" if port.mode == "n_shot_file_list" else "")


def _box(title: str, about: str | None, rows: list[w.Widget], *, opened: bool) -> w.Widget:
    note = f"<div style='line-height:1.4'>{_span(about, _GREY)}</div>" if about else ""
    if opened:
        head = w.HTML(f"<b>{_e(title)}</b>{note}")
        return w.VBox(
            [head, *rows], layout=w.Layout(border_left="3px solid #e5e7eb", padding="0 0 0 6px")
        )
    inner = w.VBox([w.HTML(note), *rows] if note else rows)
    return w.Accordion(children=[inner], titles=(title,), selected_index=None)


def _widget_bounds(f: Field) -> tuple[float, float]:
    """The widget's inclusive range (an exclusive integer bound moves by one; an exclusive
    float bound is kept and reported by validation when it is hit)."""
    big = _SAFE_INT if f.kind == "integer" else 1.7976931348623157e308
    low = f.minimum if f.minimum is not None else -big
    high = f.maximum if f.maximum is not None else big
    step = 1 if f.kind == "integer" else 0
    if f.exclusive_minimum is not None:
        low = max(low, f.exclusive_minimum + step)
    if f.exclusive_maximum is not None:
        high = min(high, f.exclusive_maximum - step)
    return low, high


def _number(text: str, kind: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return Unparsed(text, f"not {'an integer' if kind == 'integer' else 'a number'}")
    if kind == "integer" and number.is_integer():
        return int(number)
    if kind == "integer" or number != number or number in (float("inf"), float("-inf")):
        return Unparsed(text, f"not {'an integer' if kind == 'integer' else 'a finite number'}")
    return number


def _json(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        return Unparsed(text, f"not JSON: {exc}")


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _option(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _status_html(problems: list[Problem]) -> str:
    """A green tick, or every problem (some sit in folded boxes, so all are listed here)."""
    if not problems:
        return _span("✓ a valid job", _GREEN)
    head = _span(f"{len(problems)} problem(s)", _RED)
    items = "".join(f"<li>{_e(str(p))}</li>" for p in problems)
    return f"{head}<ul style='margin:0;color:{_RED};font-size:90%'>{items}</ul>"


def _span(text: str, colour: str) -> str:
    return f"<span style='color:{colour};font-size:90%'>{_e(text)}</span>"


def _e(text: str) -> str:
    import html

    return html.escape(text, quote=True)
