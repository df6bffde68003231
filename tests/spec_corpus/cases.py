"""The bad-input corpus of ``%%atai_job`` cells.

Each case is a cell that must be refused. ``at`` says where the (first) error must point:
either ``(line, column)`` (1-based) or a marker string whose first occurrence in the cell is
that position (``"windw_size"`` -> the line and column where ``windw_size`` starts).
``message`` must occur in the error text; ``suggestion`` (if given) in its did-you-mean.
"""

from __future__ import annotations

from dataclasses import dataclass

MSC = """\
name: tep
pipeline: machine-state-classification
inputs:
  worker.inference: [test1.csv, test2.csv]
  worker.n_shots:
    - {file_id: normal.csv, class: normal}
    - {file_id: fault.csv, class: fault}
config:
  reader_config:
    data_columns: [a, b, c]
    timestamp_column: time
    window_size: 64
    step_size: 16
  classifier_config:
    metric: euclidean
parallelism: 2
"""

AD = """\
name: ad
pipeline: activity-detection@1.1.0
inputs:
  worker.data: [prompts.jsonl]
config:
  generation: {temperature: 0.2, max_new_tokens: 128}
  batch_size: 8
"""

FILES = ["test1.csv", "test2.csv", "normal.csv", "fault.csv", "prompts.jsonl"]


@dataclass(frozen=True)
class Case:
    id: str
    cell: str | bytes
    at: tuple[int, int] | str
    message: str
    suggestion: str | None = None


def msc(old: str, new: str) -> str:
    assert old in MSC, old
    return MSC.replace(old, new, 1)


def ad(old: str, new: str) -> str:
    assert old in AD, old
    return AD.replace(old, new, 1)


BILLION_LAUGHS = "\n".join(
    ["name: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"k{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
)

CASES = [
    # --- malformed YAML -------------------------------------------------------------------
    Case(
        "unclosed-flow-list",
        msc("[test1.csv, test2.csv]", "[test1.csv, test2.csv"),
        (5, 17),
        "expected ',' or ']', but got ':' (while parsing a flow sequence at line 4",
    ),
    Case("unterminated-quote", msc("name: tep", 'name: "tep'), (1, 7), "while scanning a quoted"),
    Case(
        "mapping-in-plain-value",
        msc("name: tep", "name: tep: x"),
        (1, 10),
        "mapping values are not allowed",
    ),
    Case(
        "bad-indentation",
        msc("pipeline: machine", "  pipeline: machine"),
        (2, 11),
        "mapping values are not allowed",
    ),
    Case("sequence-after-mapping", "name: t\n- item\n", (2, 1), "expected <block end>"),
    Case("extra-bracket", msc("[a, b, c]", "[a, b, c]]"), (10, 28), "expected <block end>"),
    Case("json-missing-comma", '{"name": "t" "pipeline": "x"}', (1, 14), "expected ',' or '}'"),
    Case(
        "json-trailing-comma",
        '{\n  "name": "t",\n  "pipeline": "x",\n}\n',
        (3, 18),
        "trailing comma",
    ),
    Case(
        "json-trailing-comma-list",
        '{"name": "t", "inputs": {"p": ["a",]}}',
        (1, 35),
        "trailing comma",
    ),
    Case("unclosed-interpolation", msc("name: tep", "name: {{ tep"), (1, 7), "'{{' is not closed"),
    Case("two-documents", "name: a\n---\nname: b\n", (2, 1), "expected a single document"),
    # --- tabs -----------------------------------------------------------------------------
    Case(
        "tab-indented-value",
        msc("  reader_config:", "\treader_config:"),
        (9, 1),
        "tabs are not allowed for indentation",
    ),
    Case("tab-indented-json", '{\n\t"name": "t"\n}\n', (2, 1), "tabs are not allowed"),
    Case(
        "tab-after-spaces",
        msc("    window_size: 64", "  \t  window_size: 64"),
        (12, 3),
        "tabs are not allowed for indentation",
    ),
    # --- duplicate keys -------------------------------------------------------------------
    Case("duplicate-top-level", MSC + "name: again\n", (17, 1), "duplicate key 'name'"),
    Case(
        "duplicate-nested",
        msc("    step_size: 16", "    step_size: 16\n    window_size: 8"),
        (14, 5),
        "duplicate key 'window_size' (first at line 12)",
    ),
    Case(
        "duplicate-port",
        msc("  worker.n_shots:", "  worker.inference: [x]\n  worker.n_shots:"),
        (5, 3),
        "duplicate key 'worker.inference'",
    ),
    Case("duplicate-json-key", '{"name": "a", "name": "b"}', (1, 15), "duplicate key 'name'"),
    # --- wrong types ----------------------------------------------------------------------
    Case(
        "name-as-list", msc("name: tep", "name: [tep]"), (1, 7), "name must be a non-empty string"
    ),
    Case(
        "parallelism-word",
        msc("parallelism: 2", "parallelism: two"),
        (16, 14),
        "parallelism must be a whole number >= 1",
    ),
    Case(
        "parallelism-zero",
        msc("parallelism: 2", "parallelism: 0"),
        (16, 14),
        "parallelism must be a whole number >= 1",
    ),
    Case(
        "window-size-string",
        msc("window_size: 64", 'window_size: "64"'),
        '"64"',
        "config.reader_config.window_size must be an integer, not a string",
    ),
    Case(
        "data-columns-string",
        msc("data_columns: [a, b, c]", "data_columns: a"),
        (10, 19),
        "config.reader_config.data_columns must be an array",
    ),
    Case(
        "inputs-as-list",
        msc("inputs:", "inputs: []\nx_inputs:"),
        (3, 9),
        "inputs must be a mapping",
    ),
    Case(
        "port-as-string",
        msc("[test1.csv, test2.csv]", "test1.csv"),
        (4, 21),
        "input port 'worker.inference' must be a list",
    ),
    Case(
        "item-as-list",
        msc("[test1.csv, test2.csv]", "[[test1.csv]]"),
        (4, 22),
        "an input item must be a file id or a mapping",
    ),
    Case(
        "pipeline-type-number",
        msc("name: tep", "name: tep\npipeline_type: 3"),
        (2, 16),
        "pipeline_type must be a non-empty string",
    ),
    Case(
        "window-size-below-minimum",
        msc("window_size: 64", "window_size: 1"),
        "1\n    step",
        "less than the minimum of 2",
    ),
    Case(
        "component-parallelism-zero",
        AD.replace("config:", "parameters:\n  worker:\n    parallelism: 0\n    config:")
        .replace("  generation", "      generation")
        .replace("  batch_size", "      batch_size"),
        (7, 18),
        "parallelism must be a whole number >= 1",
    ),
    # --- unknown keys ---------------------------------------------------------------------
    Case(
        "misspelt-pipeline",
        msc("pipeline:", "pipline:"),
        (2, 1),
        "unknown key 'pipline'",
        "did you mean 'pipeline'?",
    ),
    Case("misspelt-name", msc("name:", "nmae:"), (1, 1), "unknown key 'nmae'", "'name'"),
    Case(
        "unknown-config-key",
        msc("window_size", "windw_size"),
        "windw_size",
        "unknown key 'windw_size' in config.reader_config",
        "did you mean 'window_size'?",
    ),
    Case(
        "unknown-classifier-key",
        msc("metric:", "metrc:"),
        "metrc",
        "unknown key 'metrc' in config.classifier_config",
        "'metric'",
    ),
    Case(
        "unknown-item-key",
        msc("class: fault", "clas: fault"),
        "clas: fault",
        "unknown key 'clas' in an input item",
        "'class'",
    ),
    Case(
        "unknown-component-key",
        AD.replace("config:", "parameters:\n  worker:\n    paralelism: 2\n    config: {}").split(
            "  generation"
        )[0],
        (7, 5),
        "unknown key 'paralelism' in parameters.worker",
        "'parallelism'",
    ),
    Case(
        "unknown-component",
        AD.replace("config:", "parameters:\n  wroker:\n    config: {}").split("  generation")[0],
        (6, 3),
        "unknown component 'wroker'",
        "'worker'",
    ),
    Case(
        "unknown-ad-config-key",
        ad("batch_size: 8", "batchsize: 8"),
        "batchsize",
        "unknown key 'batchsize' in config",
        "'batch_size'",
    ),
    # --- unknown ports --------------------------------------------------------------------
    Case(
        "misspelt-port",
        msc("worker.inference:", "worker.inferense:"),
        (4, 3),
        "unknown input port 'worker.inferense'",
        "'worker.inference'",
    ),
    Case(
        "bare-port-name",
        ad("worker.data:", "data:"),
        (4, 3),
        "unknown input port 'data'",
        "'worker.data'",
    ),
    # --- enum values ----------------------------------------------------------------------
    Case(
        "misspelt-metric",
        msc("metric: euclidean", "metric: euclidian"),
        "euclidian",
        "invalid value 'euclidian' for config.classifier_config.metric",
        "did you mean 'euclidean'?",
    ),
    Case(
        "misspelt-model-type",
        msc("  classifier_config:", "  model_type: omega_1_4_bse\n  classifier_config:"),
        "omega_1_4_bse",
        "invalid value 'omega_1_4_bse' for config.model_type",
        "'omega_1_4_base'",
    ),
    Case(
        "misspelt-weights",
        msc("metric: euclidean", "metric: euclidean\n    weights: distanse"),
        "distanse",
        "invalid value 'distanse'",
        "'distance'",
    ),
    Case(
        "misspelt-pipeline-type",
        msc("name: tep", "name: tep\npipeline_type: bacth"),
        (2, 16),
        "unknown pipeline_type 'bacth'",
        "'batch'",
    ),
    # --- required ports, n-shot -----------------------------------------------------------
    Case(
        "missing-n-shots",
        msc(
            "  worker.n_shots:\n    - {file_id: normal.csv, class: normal}\n"
            "    - {file_id: fault.csv, class: fault}\n",
            "",
        ),
        (3, 1),
        "required input port 'worker.n_shots' has no files",
    ),
    Case(
        "missing-inputs",
        ad("inputs:\n  worker.data: [prompts.jsonl]\n", ""),
        (1, 1),
        "required input port 'worker.data' has no files",
    ),
    Case(
        "empty-required-port",
        ad("[prompts.jsonl]", "[]"),
        (4, 3),
        "required input port 'worker.data' has no files",
    ),
    Case(
        "n-shot-without-class",
        msc("- {file_id: fault.csv, class: fault}", "- fault.csv"),
        "fault.csv",
        "file on n-shot port 'worker.n_shots' has no class",
    ),
    Case(
        "missing-reader-config",
        msc(
            "  reader_config:\n    data_columns: [a, b, c]\n    timestamp_column: time\n"
            "    window_size: 64\n    step_size: 16\n",
            "",
        ),
        (8, 1),
        "missing required key 'reader_config' in config",
    ),
    # --- files ----------------------------------------------------------------------------
    Case(
        "unknown-file",
        msc("test2.csv]", "tset2.csv]"),
        "tset2.csv",
        "unknown file 'tset2.csv'",
        "did you mean 'test2.csv'?",
    ),
    Case(
        "unknown-n-shot-file",
        msc("file_id: fault.csv", "file_id: fautl.csv"),
        "fautl.csv",
        "unknown file 'fautl.csv'",
        "'fault.csv'",
    ),
    # --- pipelines ------------------------------------------------------------------------
    Case(
        "unknown-pipeline",
        msc("machine-state-classification", "machine-state-clasification"),
        (2, 11),
        "unknown pipeline 'machine-state-clasification'",
        "did you mean 'machine-state-classification'?",
    ),
    Case(
        "unknown-version",
        ad("@1.1.0", "@9.9.9"),
        (2, 11),
        "pipeline 'activity-detection' has no version '9.9.9'",
    ),
    Case(
        "malformed-pipeline",
        ad("activity-detection@1.1.0", "activity-detection@"),
        (2, 11),
        "malformed pipeline",
    ),
    Case(
        "pipeline-and-pipeline-key",
        ad("name: ad", "name: ad\npipeline_key: x"),
        (2, 1),
        "pipeline_key: cannot be combined with pipeline:",
    ),
    Case(
        "config-and-parameters",
        ad("name: ad", "name: ad\nparameters: {}"),
        (6, 1),
        "top-level config: cannot be combined with parameters:",
    ),
    # --- interpolation --------------------------------------------------------------------
    Case(
        "missing-name",
        msc("[test1.csv, test2.csv]", "{{ test_fils }}"),
        (4, 21),
        "name 'test_fils' is not defined",
        "did you mean 'test_files'?",
    ),
    Case(
        "missing-name-in-string",
        msc("name: tep", "name: run-{{ rn }}"),
        (1, 11),
        "name 'rn' is not defined",
        "'run'",
    ),
    Case(
        "call-expression",
        msc("name: tep", "name: \"{{ os.system('x') }}\""),
        (1, 8),
        "cannot interpolate '{{ os.system('x') }}': only names with .attr and [index]",
    ),
    Case(
        "arithmetic-expression",
        msc("name: tep", "name: {{ run + 1 }}"),
        (1, 7),
        "cannot interpolate",
    ),
    Case(
        "private-attribute",
        msc("name: tep", "name: {{ settings._secret }}"),
        (1, 7),
        "attribute '_secret' is private",
    ),
    Case(
        "dunder-name",
        msc("name: tep", "name: {{ __builtins__ }}"),
        (1, 7),
        "'__builtins__' is private",
    ),
    Case(
        "dunder-attribute",
        msc("name: tep", "name: {{ run.__class__ }}"),
        (1, 7),
        "attribute '__class__' is private",
    ),
    Case(
        "index-out-of-range",
        msc("[test1.csv, test2.csv]", "[{{ test_files[5] }}]"),
        (4, 22),
        "index 5 is out of range for test_files",
    ),
    Case(
        "missing-key",
        msc("window_size: 64", "window_size: {{ sizes['windw'] }}"),
        (12, 18),
        "has no key 'windw'",
        "'window'",
    ),
    Case(
        "missing-attribute",
        msc("name: tep", "name: {{ settings.nmae }}"),
        (1, 7),
        "has no attribute 'nmae'",
        "'name'",
    ),
    Case("not-json-data", msc("name: tep", "name: {{ settings }}"), (1, 7), "not JSON data"),
    Case(
        "interpolation-in-key",
        msc("name: tep", "name: tep\n{{ run }}: 1"),
        (2, 1),
        "not allowed in a key",
    ),
    # --- unsafe or hostile ----------------------------------------------------------------
    Case("billion-laughs", BILLION_LAUGHS, (5, 10), "aliases expand to more than 10,000 nodes"),
    Case("recursive-alias", "name: t\nx: &a [1, *a]\n", (2, 11), "recursive alias *a"),
    Case(
        "python-apply",
        msc("name: tep", 'name: !!python/object/apply:os.system ["ls"]'),
        (1, 7),
        "tag !!python/object/apply:os.system is not allowed",
    ),
    Case(
        "python-name",
        msc("parallelism: 2", "parallelism: !!python/name:os.system ''"),
        (16, 14),
        "tag !!python/name:os.system is not allowed",
    ),
    Case(
        "custom-tag", msc("name: tep", "name: !vault secret"), (1, 7), "tag !vault is not allowed"
    ),
    Case(
        "binary-tag",
        msc("name: tep", "name: !!binary aGVsbG8="),
        (1, 7),
        "tag !!binary is not allowed",
    ),
    Case(
        "merge-key",
        "base: &b {x: 1}\nname: t\nconfig:\n  <<: *b\n",
        (4, 3),
        "merge keys (<<) are not supported",
    ),
    Case(
        "deep-nesting",
        "name: " + "[" * 100 + "]" * 100 + "\n",
        (1, 70),
        "nested more than 64 levels deep",
    ),
    Case("non-utf8", b"name: t\npipeline: \xff\xfeabc\n", (2, 11), "not UTF-8"),
    Case("latin1", "name: café\n".encode("latin-1"), (1, 10), "not UTF-8"),
    Case("control-character", "name: t\x07x\n", (1, 8), "is not allowed"),
    # --- shape ----------------------------------------------------------------------------
    Case("empty-cell", "", (1, 1), "the cell is empty"),
    Case("comment-only-cell", "# nothing here\n\n", (1, 1), "the cell is empty"),
    Case("top-level-list", "- name: t\n- pipeline: x\n", (1, 1), "is a list, not a mapping"),
    Case("top-level-scalar", "just some text\n", (1, 1), "is a single value, not a mapping"),
    Case("missing-name-key", msc("name: tep\n", ""), (1, 1), "missing key 'name'"),
    Case(
        "missing-pipeline-key",
        msc("pipeline: machine-state-classification\n", ""),
        (1, 1),
        "missing key 'pipeline'",
    ),
]
