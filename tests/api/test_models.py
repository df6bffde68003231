"""Every JSON example of the reference parses into the models and serialises back unchanged.

Reference: ``archetype-batch-api.md`` (cited by §) and the seed page ``seed-create-job.txt``
(the docs' ``POST /batch/jobs`` page). Examples are copied verbatim; where the reference only
lists fields (traces, pipeline object, schema, file metadata, ...) the example is built from the
documented fields and values and says so. Truncated examples (``...``) keep what is shown.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from atai_magics.api.models import (
    ApiModel,
    CancelResult,
    CheckpointInputItem,
    CheckpointPartsRequest,
    CheckpointPartsResponse,
    CompleteUploadRequest,
    CompleteUploadResponse,
    ComponentParameters,
    DeleteResult,
    ErrorEnvelope,
    Event,
    EventLevel,
    EventList,
    FileInputItem,
    FileMeta,
    FileMetaPage,
    FilesInfo,
    FileStatus,
    FileUploadResult,
    InitiateUploadRequest,
    InitiateUploadResponse,
    InputItem,
    InputList,
    InputProgressCounts,
    InputProgressItem,
    InputProgressList,
    InputStatus,
    JobInput,
    JobList,
    JobRecord,
    JobRequest,
    JobStatus,
    LegacyErrorEnvelope,
    Output,
    OutputList,
    Page,
    PartUrlsRequest,
    PartUrlsResponse,
    Pipeline,
    PipelineList,
    PipelineSchema,
    ProgressEntry,
    ProgressList,
    QueueDepths,
    RetryResult,
    Traces,
    UploadPart,
    format_timestamp,
)

JSON = dict[str, Any]

# =============================================================================================
# The examples
# =============================================================================================

# --- errors (§1.2, §1.3, §1.6) ---------------------------------------------------------------

# §1.6 ErrorEnvelope: the documented error body.
ERROR_DOC: JSON = {
    "errors": [
        {
            "code": "invalid_file_type",
            "message": "Unsupported file type: application/octet-stream",
            "suggestion": (
                "Supported types: image/jpeg, image/png, video/mp4, text/csv, text/plain, "
                "application/json"
            ),
            "error_uid": "err-bfa600db-c703-4061-ad9c-c14628b3554c",
        }
    ]
}

# §1.3 / §1 table ErrorEnvelope: 409 on initiate for an existing filename (observed).
ERROR_CONFLICT: JSON = {"errors": [{"code": "conflict", "message": "File already exists: ..."}]}

# §1.2 / §1.6 LegacyErrorEnvelope: FastAPI's default body on some auth failures.
ERROR_LEGACY: JSON = {"detail": "<message>"}

# --- jobs (§3, §4, seed page) ----------------------------------------------------------------

# §3.1 JobRecord: documented GET example (newer revision).
JOB_GET: JSON = {
    "id": "job_2abc3def4ghi5jkl6mno7pqr",
    "org_id": "org_1abc2def3ghi4jkl",
    "name": "tep-classification",
    "pipeline_type": "batch",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.1",
    "status": "COMPLETED",
    "parameters": {
        "worker": {
            "parallelism": 1,
            "config": {
                "model_type": "omega_1_4_base",
                "batch_size": 32,
                "reader_config": {
                    "data_columns": ["xmeas_1", "xmeas_2", "xmv_11"],
                    "timestamp_column": "timestamp",
                    "window_size": 64,
                    "step_size": 1,
                },
                "classifier_config": {
                    "n_neighbors": 5,
                    "metric": "euclidean",
                    "weights": "uniform",
                    "normalize_embeddings": False,
                },
            },
        }
    },
    "retry_count": 0,
    "preemption_count": 0,
    "queue_position": None,
    "queue_depth": None,
    "input_progress": {"pending": 0, "processing": 0, "completed": 1, "failed": 0},
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:15:00Z",
    "started_at": "2026-04-14T10:02:00Z",
    "completed_at": "2026-04-14T10:15:00Z",
    "failed_at": None,
    "cancelled_at": None,
    "error": None,
}

# §4.1 JobRecord: documented create response (older revision).
JOB_CREATE_DOC: JSON = {
    "id": "job_2abc3def4ghi5jkl6mno7pqr",
    "org_id": "org_1abc2def3ghi4jkl",
    "name": "image-classification-run",
    "pipeline_type": "batch",
    "pipeline_key": "image-classifier",
    "pipeline_version": "1.2.0",
    "status": "PENDING",
    "parameters": {
        "classifier": {"parallelism": 2, "config": {"model": "resnet50", "threshold": 0.8}}
    },
    "retry_count": 0,
    "preemption_count": 0,
    "queue_position": 3,
    "queue_depth": 5,
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:00:00Z",
    "started_at": None,
    "completed_at": None,
    "failed_at": None,
    "cancelled_at": None,
    "error": None,
}

# seed page JobRequest: the curl ``-d`` body of ``POST /batch/jobs``.
SEED_REQUEST: JSON = {
    "name": "image-classification-run",
    "pipeline_type": "batch",
    "pipeline_key": "image-classifier",
    "inputs": {"images": [{"file_id": "file_abc123"}, {"file_id": "file_def456"}]},
    "parameters": {
        "classifier": {"parallelism": 2, "config": {"model": "resnet50", "threshold": 0.8}}
    },
}

# seed page JobRecord: the response shown on the page (pretty-printed there).
SEED_RESPONSE: JSON = {
    "id": "job_2abc3def4ghi5jkl6mno7pqr",
    "org_id": "org_1abc2def3ghi4jkl",
    "name": "image-classification-run",
    "pipeline_type": "batch",
    "pipeline_key": "image-classifier",
    "pipeline_version": "1.2.0",
    "status": "PENDING",
    "parameters": {
        "classifier": {
            "parallelism": 2,
            "config": {"model": "resnet50", "threshold": 0.8},
        }
    },
    "retry_count": 0,
    "preemption_count": 0,
    "queue_position": 3,
    "queue_depth": 5,
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:00:00Z",
    "started_at": None,
    "completed_at": None,
    "failed_at": None,
    "cancelled_at": None,
    "error": None,
}

# §4.1 JobRecord: real (truncated) volve create response, microsecond timestamp.
JOB_CREATE_VOLVE: JSON = {
    "id": "job_2w2ykhs5a49qwszbdqj1sr636n",
    "name": "volve-drilling-classification",
    "pipeline_type": "batch",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.0",
    "status": "PENDING",
    "created_at": "2026-04-08T21:51:56.283818Z",
}

# §3.1 JobRecord: a write-path response carries ``input_progress: null``; the list example
# shows ``parameters: {}`` (built from the §3.1 notes).
JOB_LIST_ITEM: JSON = {
    "id": "job_7mye9zca3h8skstw7fpxdbcj2g",
    "org_id": "org_1abc2def3ghi4jkl",
    "name": "ghost-iot-activity",
    "pipeline_type": "batch",
    "pipeline_key": "activity-detection",
    "pipeline_version": "0.0.20",
    "status": "RUNNING",
    "parameters": {},
    "retry_count": 0,
    "preemption_count": 0,
    "queue_position": None,
    "queue_depth": None,
    "input_progress": None,
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:02:00Z",
    "started_at": "2026-04-14T10:02:00Z",
    "completed_at": None,
    "failed_at": None,
    "cancelled_at": None,
    "error": None,
}

# §9.1 JobRequest: the typical MSC request (volve, prod).
VOLVE_REQUEST: JSON = {
    "name": "volve-drilling-classification",
    "pipeline_type": "batch",
    "pipeline_key": "machine-state-classification",
    "inputs": {
        "worker.inference": [{"file_id": "volve_inference.csv"}],
        "worker.n_shots": [
            {"file_id": "volve_drilling.csv", "metadata": {"class": "drilling"}},
            {"file_id": "volve_not_drilling.csv", "metadata": {"class": "not_drilling"}},
        ],
    },
    "parameters": {
        "worker": {
            "parallelism": 1,
            "config": {
                "batch_size": 8,
                "flush_every_n_iteration": 1000,
                "model_type": "omega_1_3_surface",
                "classifier_config": {
                    "metric": "euclidean",
                    "n_neighbors": 5,
                    "weights": "uniform",
                },
                "reader_config": {
                    "data_columns": [
                        "BPOS",
                        "DBTM",
                        "FLWI",
                        "HDTH",
                        "HKLD",
                        "ROP",
                        "RPM",
                        "SPPA",
                        "WOB",
                    ],
                    "step_size": 1,
                    "timestamp_column": "DATE_TIME",
                    "window_size": 64,
                },
            },
        }
    },
}

# §4.1 + §9.1 JobRequest: MSC with a fine-tuned checkpoint input (built from the input item
# forms of §4.1 and the ``worker.fine_tune_checkpoint`` / ``data_source`` rows of §9.1).
CHECKPOINT_REQUEST: JSON = {
    "name": "msc-with-checkpoint",
    "pipeline_type": "batch",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.1",
    "inputs": {
        "worker.inference": [{"file_id": "tep_inference.csv"}],
        "worker.n_shots": [{"file_id": "tep_normal.csv", "metadata": {"class": "normal"}}],
        "worker.fine_tune_checkpoint": [
            {
                "kind": "checkpoint",
                "checkpoint_id": "ckp_5kn596dy9v8wztr2fcqyhvrsa0",
                "metadata": {},
            }
        ],
    },
    "parameters": {
        "worker": {
            "parallelism": 1,
            "config": {"model_type": "omega_1_5_base", "data_source": {"source_type": "s3"}},
        }
    },
}

# §4.2 JobList: ``{"total", "offset", "limit", "jobs"}`` (docs echo ``limit: 10``).
JOB_LIST: JSON = {"total": 2, "offset": 0, "limit": 10, "jobs": [JOB_GET, JOB_LIST_ITEM]}

# §4.4 RetryResult.
RETRY_RESULT: JSON = {"id": "job_…", "status": "PENDING", "retry_count": 1}

# §4.5 CancelResult.
CANCEL_RESULT: JSON = {"id": "job_…", "status": "CANCELLED", "cancelled_at": "2026-04-14T10:10:00Z"}

# §4.6 DeleteResult.
DELETE_RESULT: JSON = {"id": "job_…", "deleted": True}

# §4.7 QueueDepths.
QUEUE_DEPTHS: JSON = {
    "queues": [{"pipeline_type": "batch", "depth": 12}, {"pipeline_type": "training", "depth": 3}]
}

# --- events (§5) -----------------------------------------------------------------------------

# §5 Event: first documented item.
EVENT_DOC_1: JSON = {
    "id": 1001,
    "event_type": "inference.success",
    "level": "SUCCESS",
    "message": "Inference completed for input",
    "payload": {"duration_ms": 1250},
    "input_id": "inp_abc123def456",
    "index": 0,
    "created_at": "2026-04-14T10:05:00Z",
}

# §5 Event: second documented item (truncated after ``index`` in the reference).
EVENT_DOC_2: JSON = {
    "id": 1002,
    "event_type": "inference.failed",
    "level": "FAILED",
    "message": "Input file format not supported",
    "payload": {"error_code": "UNSUPPORTED_FORMAT"},
    "input_id": "inp_ghi789jkl012",
    "index": 1,
}

# §5 Event: the item shown in the real volve events body.
EVENT_VOLVE: JSON = {"event_type": "info", "level": "INFO", "message": "Using accelerator: cuda"}

# §5 Event: observed rows of the events table (level, event_type, message only).
EVENT_OOM_WARN: JSON = {
    "event_type": "inference.oom",
    "level": "WARN",
    "message": "CUDA OOM on batch 0 (16 items), recovering: splitting into 8 + 8",
}
EVENT_POD_TERMINATED: JSON = {
    "event_type": "pod.terminated",
    "level": "ERROR",
    "message": "Container worker terminated: OOMKilled (exit=137)",
}

# §5 EventList: the documented envelope with the documented items.
EVENT_LIST_DOC: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "total": 2,
    "offset": 0,
    "limit": 100,
    "events": [EVENT_DOC_1, EVENT_DOC_2],
}

# §5 EventList: the real volve response body (truncated; no offset/limit shown).
EVENT_LIST_VOLVE: JSON = {
    "job_id": "job_2w2ykhs5a49qwszbdqj1sr636n",
    "total": 8,
    "events": [EVENT_VOLVE],
}

# --- progress (§6) ---------------------------------------------------------------------------

# §6 ProgressEntry: the documented example entry.
PROGRESS_ENTRY: JSON = {
    "id": 501,
    "kind": "inference",
    "step": 1,
    "message": "Processing input 1 of 10",
    "metrics": {"percent_complete": 10, "items_processed": 1, "items_total": 10},
    "payload": {},
    "input_id": "inp_abc123def456",
    "index": 0,
    "created_at": "2026-04-14T10:03:00Z",
}

# §6 ProgressList: ``{"job_id", "total", "offset", "limit", "entries"}``.
PROGRESS_LIST: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "total": 1,
    "offset": 0,
    "limit": 100,
    "entries": [PROGRESS_ENTRY],
}

# --- inputs (§7.1-§7.4) ----------------------------------------------------------------------

# §7.2 JobInput: the documented example.
INPUT_DOC: JSON = {
    "id": "inp_abc123def456",
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "port_name": "worker.inference",
    "file_id": "file_abc123",
    "data": {
        "ref": "https://storage.example.com/files/tep_inference.csv",
        "filename": "tep_inference.csv",
        "file_type": "text/csv",
        "file_extension": ".csv",
        "num_bytes": 245760,
        "metadata": {},
        "file_tags": None,
        "file_attributes": None,
    },
    "status": "completed",
    "error_message": None,
    "created_at": "2026-04-14T10:00:00Z",
    "completed_at": "2026-04-14T10:05:00Z",
}

# §7.2 JobInput: an n-shot input on a non-tracked port (status ``reference``; built).
INPUT_REFERENCE: JSON = {
    "id": "inp_ghi789jkl012",
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "port_name": "worker.n_shots",
    "file_id": "tep_normal.csv",
    "data": {
        "ref": "https://storage.example.com/files/tep_normal.csv",
        "filename": "tep_normal.csv",
        "file_type": "text/csv",
        "file_extension": ".csv",
        "num_bytes": 40960,
        "metadata": {"class": "normal"},
        "file_tags": None,
        "file_attributes": None,
    },
    "status": "reference",
    "error_message": None,
    "created_at": "2026-04-14T10:00:00Z",
    "completed_at": None,
}

# §7.2 JobInput: a pending tracked input (built; ``completed_at`` null until completed).
INPUT_PENDING: JSON = {
    "id": "inp_mno345pqr678",
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "port_name": "worker.inference",
    "file_id": "tep_inference_2.csv",
    "data": {
        "ref": "https://storage.example.com/files/tep_inference_2.csv",
        "filename": "tep_inference_2.csv",
    },
    "status": "pending",
    "error_message": None,
    "created_at": "2026-04-14T10:00:00Z",
    "completed_at": None,
}

# §7.2 InputList.
INPUT_LIST: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "total": 2,
    "offset": 0,
    "limit": 50,
    "inputs": [INPUT_DOC, INPUT_REFERENCE],
}

# §7.3 InputProgressItem: a finished input with its latest progress row and completion rank.
INPUT_PROGRESS_ITEM_DONE: JSON = {"input": INPUT_DOC, "latest_progress": PROGRESS_ENTRY, "step": 1}

# §7.3 InputProgressItem: an input with no progress yet (``latest_progress``/``step`` null).
INPUT_PROGRESS_ITEM_PENDING: JSON = {"input": INPUT_PENDING, "latest_progress": None, "step": None}

# §7.3 InputProgressList.
INPUT_PROGRESS_LIST: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "total": 2,
    "offset": 0,
    "limit": 50,
    "items": [INPUT_PROGRESS_ITEM_DONE, INPUT_PROGRESS_ITEM_PENDING],
}

# §7.4 InputProgressCounts.
INPUT_PROGRESS_COUNTS: JSON = {
    "job_id": "job_…",
    "pending": 0,
    "processing": 1,
    "completed": 8,
    "failed": 1,
}

# --- traces (§7.5; built from the documented shape) ------------------------------------------

TRACES: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "bucket_seconds": 7.8,
    "latest_event_at": "2026-04-14T10:05:00Z",
    "points": [
        {
            "t": "2026-04-14T10:00:07.800000Z",
            "step": 0,
            "files": {"completed": 0, "failed": 0},
            "items": {},
        },
        {
            "t": "2026-04-14T10:15:00Z",
            "step": 2,
            "files": {"completed": 1, "failed": 1},
            "items": {"inference": {"success": 10, "failed": 0}},
        },
    ],
}

# §7.5 Traces: nothing happened yet (``latest_event_at`` null, no points).
TRACES_EMPTY: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "bucket_seconds": 1.0,
    "latest_event_at": None,
    "points": [],
}

# --- outputs (§7.6, §9.3) --------------------------------------------------------------------

# §7.6 Output: every documented field (values from §9.3's example output ``result1.json``).
OUTPUT_DOC: JSON = {
    "id": "out_abc123def456",
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "port_name": "results",
    "input_id": "inp_abc123def456",
    "input_file_id": "file_abc123",
    "data": {
        "ref": "https://storage.example.com/outputs/result1.json?X-Amz-Signature=abc",
        "filename": "result1.json",
        "file_type": "application/json",
        "file_extension": ".json",
        "num_bytes": 1024,
        "metadata": {},
        "file_tags": None,
        "file_attributes": None,
    },
    "expires_at": "2026-04-14T11:15:00Z",
    "created_at": "2026-04-14T10:15:00Z",
}

# §7.6 Output: a ``ref`` given as a relative API path (fine-tuning repo).
OUTPUT_RELATIVE_REF: JSON = {
    "id": "out_...",
    "port_name": "worker.results",
    "data": {
        "ref": "/batch/jobs/job_6pgect4qqc8h0sd6v3rva23y8g/outputs/out_.../download",
        "filename": "pred_volve_inference_part_0.csv",
    },
}

# §7.6 OutputList: the real volve page (truncated to the item shown).
OUTPUT_LIST_VOLVE: JSON = {
    "job_id": "job_6pgect4qqc8h0sd6v3rva23y8g",
    "total": 1375,
    "offset": 0,
    "limit": 50,
    "outputs": [
        {
            "id": "out_...",
            "data": {
                "ref": "https://s3...",
                "filename": "pred_volve_inference_part_1374.csv",
                "num_bytes": 147016,
            },
            "expires_at": "2026-04-10T00:21:12Z",
        }
    ],
}

# §7.6 OutputList: the documented envelope.
OUTPUT_LIST_DOC: JSON = {
    "job_id": "job_2abc3def4ghi5jkl6mno7pqr",
    "total": 1,
    "offset": 0,
    "limit": 50,
    "outputs": [OUTPUT_DOC],
}

# --- pipeline registry (§8, §9; built from the documented fields) ----------------------------

# §8.1 + §9.1 Pipeline: MSC with its ports and the default_config shown by ``GET pipeline``.
PIPELINE_MSC: JSON = {
    "id": "ppl_abc123def456",
    "pipeline_key": "machine-state-classification",
    "pipeline_version": "1.1.1",
    "name": "Machine State Classification",
    "description": "Time-series classification with an Omega encoder and a KNN classifier",
    "pipeline_type": "batch",
    "components": {"worker": "cmp_xyz789"},
    "default_config": {
        "worker": {
            "parallelism": 1,
            "config": {
                "model_type": "omega_1_4_base",
                "batch_size": 32,
                "classifier_config": {
                    "n_neighbors": 5,
                    "metric": "euclidean",
                    "weights": "uniform",
                    "normalize_embeddings": False,
                },
            },
        }
    },
    "config_schema": {},
    "user_config_schema": {},
    "edges": [],
    "inputs": {
        "worker.inference": {
            "name": "Input files",
            "description": "CSV files to classify",
            "mode": "plain_file_list",
            "distribute": "scatter",
            "required": True,
            "tracked": True,
        },
        "worker.n_shots": {
            "name": "N-Shot example files",
            "description": "Labelled example CSVs",
            "mode": "n_shot_file_list",
            "distribute": "replicate",
            "required": True,
            "tracked": False,
        },
    },
    "outputs": {"worker.results": {"name": "Output files", "description": "Result CSVs"}},
    "retry_policy": {},
    "visibility": "platform",
    "org_id": "org_1abc2def3ghi4jkl",
    "status": "published",
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:00:00Z",
}

# §9.3 Pipeline: the older docs' ``image-classifier`` (bare port keys, ``pip_`` id).
PIPELINE_IMAGE_CLASSIFIER: JSON = {
    "id": "pip_abc123def456",
    "pipeline_key": "image-classifier",
    "pipeline_version": "1.2.0",
    "name": "Image Classifier",
    "description": "Classifies images",
    "pipeline_type": "batch",
    "components": {"classifier": "cmp_xyz789"},
    "default_config": {"classifier": {"parallelism": 1, "config": {}}},
    "config_schema": {},
    "user_config_schema": {},
    "edges": [],
    "inputs": {
        "images": {
            "name": "images",
            "description": "Images to classify",
            "mode": "plain_file_list",
            "distribute": "scatter",
            "required": True,
        }
    },
    "outputs": {"results": {"name": "results", "description": "Classification results"}},
    "retry_policy": {},
    "visibility": "platform",
    "org_id": "org_1abc2def3ghi4jkl",
    "status": "published",
    "created_at": "2026-04-14T10:00:00Z",
    "updated_at": "2026-04-14T10:00:00Z",
}

# §8.2 PipelineList (docs echo ``limit: 20``).
PIPELINE_LIST: JSON = {
    "total": 2,
    "offset": 0,
    "limit": 20,
    "pipelines": [PIPELINE_MSC, PIPELINE_IMAGE_CLASSIFIER],
}

# §8.4 + §9.3 PipelineSchema: ``image-classifier``'s user schema (model enum, threshold 0-1).
PIPELINE_SCHEMA: JSON = {
    "id": "pip_abc123def456",
    "pipeline_key": "image-classifier",
    "pipeline_version": "1.2.0",
    "user_schema": {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "enum": ["resnet50", "efficientnet-b0"],
                "description": "Model architecture to use",
            },
            "threshold": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0.5,
                "description": "Classification confidence threshold",
            },
        },
    },
    "config_schema": {},
    "inputs": PIPELINE_IMAGE_CLASSIFIER["inputs"],
    "outputs": PIPELINE_IMAGE_CLASSIFIER["outputs"],
}

# §8.4 PipelineSchema: ``user_schema`` as a pretty-printed JSON string (possible per §8.4).
PIPELINE_SCHEMA_STRING: JSON = {
    **PIPELINE_SCHEMA,
    "user_schema": json.dumps(PIPELINE_SCHEMA["user_schema"], indent=2),
}

# --- files (§10) -----------------------------------------------------------------------------

# §10.1 FileUploadResult: simple upload.
FILE_UPLOAD_RESULT: JSON = {"is_valid": True, "file_id": "test_image.jpg", "file_uid": "…"}

# §10.3 FileUploadResult: delete.
FILE_DELETE_RESULT: JSON = {"is_valid": True, "file_id": "…", "file_uid": "…"}

# §10.8 FileUploadResult: what the client derives from a complete response.
FILE_UPLOAD_RESULT_DERIVED: JSON = {
    "is_valid": True,
    "file_id": "training-data.parquet",
    "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
}

# §10.5 FilesInfo (``last_updated`` is an epoch float).
FILES_INFO: JSON = {
    "num_files": 142,
    "num_bytes": 4831785472,
    "num_ingested": 138,
    "last_updated": 1745803938.214,
}

# §10.6 FileMeta: a CSV (attributes ``num_rows, num_columns, column_headers``; built).
FILE_META_CSV: JSON = {
    "file_id": "volve_inference.csv",
    "file_uid": "fil_32b6x7g3nt8q4vwmnf73rc9cqb",
    "is_valid": True,
    "file_type": "text/csv",
    "num_bytes": 245760,
    "file_status": "FILE_STATUS_INGESTED",
    "ingested": True,
    "file_index": 0,
    "file_tags": {},
    "file_attributes": {
        "num_rows": 200,
        "num_columns": 3,
        "column_headers": ["DATE_TIME", "BPOS", "DBTM"],
    },
}

# §10.6 FileMeta: an image (attributes ``width, height, num_channels, channel_bands``; built).
FILE_META_IMAGE: JSON = {
    "file_id": "test_image.jpg",
    "file_uid": "2511053133de1366dab1ab",
    "is_valid": True,
    "file_type": "image/jpeg",
    "num_bytes": 102400,
    "file_status": "FILE_STATUS_IN_MEMORY",
    "ingested": True,
    "file_index": 1,
    "file_tags": {},
    "file_attributes": {
        "width": 640,
        "height": 480,
        "num_channels": 3,
        "channel_bands": ["R", "G", "B"],
    },
}

# §10.6 FileMeta: right after a multipart upload (``metadata_status: not_extracted``; built).
FILE_META_MULTIPART: JSON = {
    "file_id": "ghost_iot_home_1gb.jsonl",
    "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
    "is_valid": True,
    "file_type": "application/x-ndjson",
    "num_bytes": 1073741824,
    "file_status": "FILE_STATUS_REGISTERED",
    "ingested": False,
    "file_index": 2,
    "file_tags": {},
    "file_attributes": {"metadata_status": "not_extracted"},
}

# §10.6 file metadata list, documented shard style: a bare JSON array of FileMeta.
FILE_META_BARE_ARRAY: list[JSON] = [FILE_META_CSV, FILE_META_IMAGE, FILE_META_MULTIPART]

# §10.6 FileMetaPage: the Oct-2026 client's cursor envelope.
FILE_META_PAGE: JSON = {
    "data": [FILE_META_MULTIPART, FILE_META_IMAGE],
    "has_more": True,
    "next_cursor": "fil_32b6x7g3nt8q4vwmnf73rc9cqb",
    "prev_cursor": None,
}

# §10.6 FileMetaPage: the last page.
FILE_META_PAGE_LAST: JSON = {
    "data": [FILE_META_CSV],
    "has_more": False,
    "next_cursor": None,
    "prev_cursor": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
}

# §10.8 InitiateUploadRequest.
INITIATE_REQUEST: JSON = {
    "filename": "training-data.parquet",
    "file_type": "application/x-parquet",
    "num_bytes": 1073741824,
    "resume_if_started": False,
}

# §10.8 InitiateUploadRequest: resuming (the default omitted in the first call, set here).
INITIATE_REQUEST_RESUME: JSON = {
    "filename": "volve_inference.csv",
    "file_type": "text/csv",
    "num_bytes": 245760,
    "resume_if_started": True,
}

# §10.8 InitiateUploadResponse: documented (0-based parts, per-part ``expires_at``;
# truncated to the one part shown).
INITIATE_RESPONSE_DOC: JSON = {
    "upload_id": "upl-7d6c9f0a3b51",
    "file_uid": "1d4f9b2e-…",
    "file_name": "training-data.parquet",
    "total_bytes": 1073741824,
    "num_parts": 128,
    "part_size": 8388608,
    "is_resume": False,
    "integrity_algorithm": "crc32c",
    "parts": [
        {
            "part_number": 0,
            "url": "https://storage…/upl-7d6c9f0a3b51/0?X-Amz-Signature=…",
            "offset": 0,
            "length": 8388608,
            "expires_at": "2026-04-28T15:32:18Z",
        }
    ],
}

# §10.8 InitiateUploadResponse: observed prod multipart shape (``strategy``, 1-based parts,
# 400 MiB parts, top-level ``expires_at``; built from the observed field list).
INITIATE_RESPONSE_PROD: JSON = {
    "upload_id": "upl_1mehceg8cn80qsekh46143whrx",
    "file_uid": "fil_32b6x7g3nt8q4vwmnf73rc9cqb",
    "strategy": "multipart",
    "num_parts": 2,
    "part_size": 419430400,
    "parts": [
        {
            "part_number": 1,
            "url": "https://s3.example.com/upl_1mehceg8cn80qsekh46143whrx/1?X-Amz-Signature=a",
            "offset": 0,
            "length": 419430400,
        },
        {
            "part_number": 2,
            "url": "https://s3.example.com/upl_1mehceg8cn80qsekh46143whrx/2?X-Amz-Signature=b",
            "offset": 419430400,
            "length": 104857600,
        },
    ],
    "expires_at": "2026-04-08T22:51:56Z",
}

# §10.8 / §11.2 InitiateUploadResponse: observed prod ``simple`` strategy (one PUT).
INITIATE_RESPONSE_PROD_SIMPLE: JSON = {
    "upload_id": "upl_...",
    "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
    "strategy": "simple",
    "num_parts": 1,
    "part_size": 419430400,
    "parts": [
        {"part_number": 1, "url": "https://s3.example.com/upl_.../1", "offset": 0, "length": 4096}
    ],
    "expires_at": "2026-04-08T21:51:56.283818Z",
}

# §10.8 PartUrlsRequest.
PART_URLS_REQUEST: JSON = {"part_numbers": [42, 43, 44]}

# §10.8 PartUrlsResponse: ``{part_number, url, offset, length, expires_at}`` in request order.
PART_URLS_RESPONSE: JSON = {
    "parts": [
        {
            "part_number": n,
            "url": f"https://storage.example.com/upl-7d6c9f0a3b51/{n}?X-Amz-Signature=x{n}",
            "offset": n * 8388608,
            "length": 8388608,
            "expires_at": "2026-04-28T16:32:18Z",
        }
        for n in (42, 43, 44)
    ]
}

# §10.8 CheckpointPartsRequest (tokens keep the ETag quotes, as the doc examples).
CHECKPOINT_REQUEST_PARTS: JSON = {
    "parts": [
        {"part_number": 0, "part_token": '"f912ab83e0d1..."'},
        {"part_number": 1, "part_token": '"a0b1c2d3e4f5..."'},
        {"part_number": 2, "part_token": '"0f1e2d3c4b5a..."'},
    ]
}

# §10.8 CheckpointPartsResponse.
CHECKPOINT_RESPONSE: JSON = {"num_checkpointed": 3}

# §10.8 CompleteUploadRequest: remaining parts plus a CRC32C checksum (8 base64 chars).
COMPLETE_REQUEST: JSON = {
    "parts": [{"part_number": 3, "part_token": '"9e8d7c6b5a49..."'}],
    "integrity_checksum": "yZRlqg==",
}

# §10.8 CompleteUploadRequest: every part already checkpointed.
COMPLETE_REQUEST_EMPTY: JSON = {"parts": []}

# §10.8 CompleteUploadResponse: documented.
COMPLETE_RESPONSE: JSON = {
    "file_uid": "fil_5hx819ysp38n2rt1f5fv0wsxgh",
    "file_name": "training-data.parquet",
    "num_bytes": 1073741824,
    "file_status": "Registered",
    "file_attributes": {"metadata_status": "not_extracted"},
}

# §10.6 CompleteUploadResponse: the one a skill showed (headers elided in the reference).
COMPLETE_RESPONSE_SKILL: JSON = {
    "file_uid": "fil_32b6x7g3nt8q4vwmnf73rc9cqb",
    "file_name": "volve_inference.csv",
    "num_bytes": 245760,
    "file_status": "Registered",
    "file_attributes": {"column_headers": ["DATE_TIME", "BPOS"], "num_columns": 28},
}

# =============================================================================================
# Round trips
# =============================================================================================

EXAMPLES = [
    # errors
    pytest.param(ErrorEnvelope, ERROR_DOC, id="§1.6-ErrorEnvelope-doc"),
    pytest.param(ErrorEnvelope, ERROR_CONFLICT, id="§1.3-ErrorEnvelope-conflict"),
    pytest.param(LegacyErrorEnvelope, ERROR_LEGACY, id="§1.2-LegacyErrorEnvelope"),
    # jobs
    pytest.param(JobRecord, JOB_GET, id="§3.1-JobRecord-get"),
    pytest.param(JobRecord, JOB_CREATE_DOC, id="§4.1-JobRecord-create-doc"),
    pytest.param(JobRecord, SEED_RESPONSE, id="seed-JobRecord-response"),
    pytest.param(JobRecord, JOB_CREATE_VOLVE, id="§4.1-JobRecord-create-volve"),
    pytest.param(JobRecord, JOB_LIST_ITEM, id="§3.1-JobRecord-list-item"),
    pytest.param(JobRequest, SEED_REQUEST, id="seed-JobRequest-request"),
    pytest.param(JobRequest, VOLVE_REQUEST, id="§9.1-JobRequest-volve"),
    pytest.param(JobRequest, CHECKPOINT_REQUEST, id="§4.1-JobRequest-checkpoint"),
    pytest.param(JobList, JOB_LIST, id="§4.2-JobList"),
    pytest.param(RetryResult, RETRY_RESULT, id="§4.4-RetryResult"),
    pytest.param(CancelResult, CANCEL_RESULT, id="§4.5-CancelResult"),
    pytest.param(DeleteResult, DELETE_RESULT, id="§4.6-DeleteResult"),
    pytest.param(QueueDepths, QUEUE_DEPTHS, id="§4.7-QueueDepths"),
    # events
    pytest.param(Event, EVENT_DOC_1, id="§5-Event-doc-1"),
    pytest.param(Event, EVENT_DOC_2, id="§5-Event-doc-2-truncated"),
    pytest.param(Event, EVENT_VOLVE, id="§5-Event-volve"),
    pytest.param(Event, EVENT_OOM_WARN, id="§5-Event-oom-warn"),
    pytest.param(Event, EVENT_POD_TERMINATED, id="§5-Event-pod-terminated"),
    pytest.param(EventList, EVENT_LIST_DOC, id="§5-EventList-doc"),
    pytest.param(EventList, EVENT_LIST_VOLVE, id="§5-EventList-volve"),
    # progress
    pytest.param(ProgressEntry, PROGRESS_ENTRY, id="§6-ProgressEntry"),
    pytest.param(ProgressList, PROGRESS_LIST, id="§6-ProgressList"),
    # inputs
    pytest.param(JobInput, INPUT_DOC, id="§7.2-JobInput-doc"),
    pytest.param(JobInput, INPUT_REFERENCE, id="§7.2-JobInput-reference"),
    pytest.param(JobInput, INPUT_PENDING, id="§7.2-JobInput-pending"),
    pytest.param(InputList, INPUT_LIST, id="§7.2-InputList"),
    pytest.param(InputProgressItem, INPUT_PROGRESS_ITEM_DONE, id="§7.3-InputProgressItem-done"),
    pytest.param(
        InputProgressItem, INPUT_PROGRESS_ITEM_PENDING, id="§7.3-InputProgressItem-pending"
    ),
    pytest.param(InputProgressList, INPUT_PROGRESS_LIST, id="§7.3-InputProgressList"),
    pytest.param(InputProgressCounts, INPUT_PROGRESS_COUNTS, id="§7.4-InputProgressCounts"),
    pytest.param(InputProgressCounts, JOB_GET["input_progress"], id="§3.1-input_progress"),
    # traces
    pytest.param(Traces, TRACES, id="§7.5-Traces"),
    pytest.param(Traces, TRACES_EMPTY, id="§7.5-Traces-empty"),
    # outputs
    pytest.param(Output, OUTPUT_DOC, id="§7.6-Output-doc"),
    pytest.param(Output, OUTPUT_RELATIVE_REF, id="§7.6-Output-relative-ref"),
    pytest.param(OutputList, OUTPUT_LIST_DOC, id="§7.6-OutputList-doc"),
    pytest.param(OutputList, OUTPUT_LIST_VOLVE, id="§7.6-OutputList-volve"),
    # pipelines
    pytest.param(Pipeline, PIPELINE_MSC, id="§8.1-Pipeline-msc"),
    pytest.param(Pipeline, PIPELINE_IMAGE_CLASSIFIER, id="§9.3-Pipeline-image-classifier"),
    pytest.param(PipelineList, PIPELINE_LIST, id="§8.2-PipelineList"),
    pytest.param(PipelineSchema, PIPELINE_SCHEMA, id="§8.4-PipelineSchema"),
    pytest.param(PipelineSchema, PIPELINE_SCHEMA_STRING, id="§8.4-PipelineSchema-string"),
    # files
    pytest.param(FileUploadResult, FILE_UPLOAD_RESULT, id="§10.1-FileUploadResult"),
    pytest.param(FileUploadResult, FILE_DELETE_RESULT, id="§10.3-FileUploadResult-delete"),
    pytest.param(FileUploadResult, FILE_UPLOAD_RESULT_DERIVED, id="§10.8-FileUploadResult"),
    pytest.param(FilesInfo, FILES_INFO, id="§10.5-FilesInfo"),
    pytest.param(FileMeta, FILE_META_CSV, id="§10.6-FileMeta-csv"),
    pytest.param(FileMeta, FILE_META_IMAGE, id="§10.6-FileMeta-image"),
    pytest.param(FileMeta, FILE_META_MULTIPART, id="§10.6-FileMeta-multipart"),
    pytest.param(FileMetaPage, FILE_META_PAGE, id="§10.6-FileMetaPage"),
    pytest.param(FileMetaPage, FILE_META_PAGE_LAST, id="§10.6-FileMetaPage-last"),
    pytest.param(InitiateUploadRequest, INITIATE_REQUEST, id="§10.8-InitiateUploadRequest"),
    pytest.param(
        InitiateUploadRequest, INITIATE_REQUEST_RESUME, id="§10.8-InitiateUploadRequest-resume"
    ),
    pytest.param(
        InitiateUploadResponse, INITIATE_RESPONSE_DOC, id="§10.8-InitiateUploadResponse-doc"
    ),
    pytest.param(
        InitiateUploadResponse, INITIATE_RESPONSE_PROD, id="§10.8-InitiateUploadResponse-prod"
    ),
    pytest.param(
        InitiateUploadResponse,
        INITIATE_RESPONSE_PROD_SIMPLE,
        id="§10.8-InitiateUploadResponse-prod-simple",
    ),
    pytest.param(PartUrlsRequest, PART_URLS_REQUEST, id="§10.8-PartUrlsRequest"),
    pytest.param(PartUrlsResponse, PART_URLS_RESPONSE, id="§10.8-PartUrlsResponse"),
    pytest.param(CheckpointPartsRequest, CHECKPOINT_REQUEST_PARTS, id="§10.8-CheckpointRequest"),
    pytest.param(CheckpointPartsResponse, CHECKPOINT_RESPONSE, id="§10.8-CheckpointResponse"),
    pytest.param(CompleteUploadRequest, COMPLETE_REQUEST, id="§10.8-CompleteUploadRequest"),
    pytest.param(
        CompleteUploadRequest, COMPLETE_REQUEST_EMPTY, id="§10.8-CompleteUploadRequest-empty"
    ),
    pytest.param(CompleteUploadResponse, COMPLETE_RESPONSE, id="§10.8-CompleteUploadResponse"),
    pytest.param(
        CompleteUploadResponse, COMPLETE_RESPONSE_SKILL, id="§10.6-CompleteUploadResponse-skill"
    ),
]


def _canonical(value: Any) -> str:
    """JSON text with sorted keys: tells ``1`` from ``1.0`` and ``true`` from ``1``."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _assert_round_trip(model: type[ApiModel], example: JSON) -> ApiModel:
    parsed = model.model_validate(example)
    dumped = parsed.to_json_dict()
    assert dumped == example
    assert _canonical(dumped) == _canonical(example)
    return parsed


@pytest.mark.parametrize(("model", "example"), EXAMPLES)
def test_example_round_trips(model: type[ApiModel], example: JSON) -> None:
    _assert_round_trip(model, example)


@pytest.mark.parametrize(("model", "example"), EXAMPLES)
def test_example_round_trips_from_json_text(model: type[ApiModel], example: JSON) -> None:
    text = json.dumps(example)
    parsed = model.model_validate_json(text)
    assert json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True)) == example
    assert _canonical(parsed.to_json_dict()) == _canonical(json.loads(text))


def test_seed_request_and_response_agree() -> None:
    """The seed page's response echoes its request (same job as the §4.1 example)."""
    request = JobRequest.model_validate(SEED_REQUEST)
    record = JobRecord.model_validate(SEED_RESPONSE)
    assert SEED_RESPONSE == JOB_CREATE_DOC
    assert record.name == request.name
    assert record.pipeline_key == request.pipeline_key
    assert record.parameters == request.parameters
    assert record.status is JobStatus.PENDING
    assert (record.queue_position, record.queue_depth) == (3, 5)


def test_bare_array_file_list_items_parse_as_file_meta() -> None:
    """§10.6: the documented shard style returns a bare JSON array of metadata objects."""
    parsed = [FileMeta.model_validate(item) for item in FILE_META_BARE_ARRAY]
    assert [item.to_json_dict() for item in parsed] == FILE_META_BARE_ARRAY
    assert [item.file_status for item in parsed] == [
        FileStatus.INGESTED,
        FileStatus.IN_MEMORY,
        FileStatus.REGISTERED,
    ]
    adapter = TypeAdapter(list[FileMeta])
    assert (
        adapter.dump_python(
            adapter.validate_python(FILE_META_BARE_ARRAY), mode="json", exclude_unset=True
        )
        == FILE_META_BARE_ARRAY
    )
    # The client wraps a bare array into the cursor shape, with ``has_more`` false.
    wrapped = FileMetaPage(data=parsed)
    assert wrapped.has_more is False
    assert wrapped.next_cursor is None
    assert [item.to_json_dict() for item in wrapped.data] == FILE_META_BARE_ARRAY


def test_parsed_values_are_typed() -> None:
    job = JobRecord.model_validate(JOB_GET)
    assert job.status is JobStatus.COMPLETED
    assert job.input_progress is not None
    assert job.input_progress.total == 1
    assert job.parameters["worker"].parallelism == 1
    assert job.parameters["worker"].config["batch_size"] == 32
    assert job.queue_position is None

    counts = InputProgressCounts.model_validate(INPUT_PROGRESS_COUNTS)
    assert counts.total == 10

    job_input = JobInput.model_validate(INPUT_DOC)
    assert job_input.status is InputStatus.COMPLETED
    assert job_input.data is not None
    assert job_input.data.num_bytes == 245760
    assert JobInput.model_validate(INPUT_REFERENCE).status is InputStatus.REFERENCE

    assert Event.model_validate(EVENT_DOC_2).level is EventLevel.FAILED
    assert Event.model_validate(EVENT_OOM_WARN).level is EventLevel.WARN

    traces = Traces.model_validate(TRACES)
    assert traces.points[1].items["inference"].success == 10
    assert traces.points[1].files.failed == 1

    pipeline = Pipeline.model_validate(PIPELINE_MSC)
    assert pipeline.inputs["worker.n_shots"].tracked is False
    assert pipeline.inputs["worker.inference"].required is True
    assert pipeline.default_config["worker"].config["model_type"] == "omega_1_4_base"

    doc = InitiateUploadResponse.model_validate(INITIATE_RESPONSE_DOC)
    prod = InitiateUploadResponse.model_validate(INITIATE_RESPONSE_PROD)
    assert doc.parts[0].part_number == 0
    assert doc.parts[0].expires_at is not None
    assert doc.expires_at is None
    assert [part.part_number for part in prod.parts] == [1, 2]
    assert prod.parts[0].expires_at is None
    assert prod.strategy == "multipart"
    assert prod.expires_at == datetime(2026, 4, 8, 22, 51, 56, tzinfo=timezone.utc)

    schema = PipelineSchema.model_validate(PIPELINE_SCHEMA_STRING)
    assert isinstance(schema.user_schema, str)
    assert json.loads(schema.user_schema) == PIPELINE_SCHEMA["user_schema"]

    errors = ErrorEnvelope.model_validate(ERROR_DOC)
    assert errors.errors[0].code == "invalid_file_type"
    assert LegacyErrorEnvelope.model_validate(ERROR_LEGACY).detail == "<message>"

    assert FilesInfo.model_validate(FILES_INFO).last_updated == pytest.approx(1745803938.214)


# =============================================================================================
# Unknown fields and values
# =============================================================================================


def test_unknown_fields_are_kept_and_round_trip() -> None:
    example = {
        **JOB_GET,
        "priority": 5,
        "labels": {"team": "drilling"},
        "parameters": {
            "worker": {**JOB_GET["parameters"]["worker"], "gpu": "a100"},
        },
        "input_progress": {**JOB_GET["input_progress"], "skipped": 2},
    }
    job = _assert_round_trip(JobRecord, example)
    assert isinstance(job, JobRecord)
    assert job.model_extra == {"priority": 5, "labels": {"team": "drilling"}}
    assert job.parameters["worker"].model_extra == {"gpu": "a100"}
    assert job.input_progress is not None
    assert job.input_progress.model_extra == {"skipped": 2}


@pytest.mark.parametrize(
    ("model", "example"),
    [
        pytest.param(
            JobInput,
            {**INPUT_DOC, "data": {**INPUT_DOC["data"], "input_id": "inp_abc123def456"}},
            id="DataRef-input_id",
        ),
        pytest.param(Event, {**EVENT_DOC_1, "trace_id": "abc"}, id="Event"),
        pytest.param(
            Traces,
            {**TRACES, "points": [{**TRACES["points"][0], "queued": 3}]},
            id="TracePoint",
        ),
        pytest.param(
            InitiateUploadResponse,
            {**INITIATE_RESPONSE_PROD, "parts": [{**INITIATE_RESPONSE_PROD["parts"][0], "x": 1}]},
            id="UploadPart",
        ),
        pytest.param(FileMetaPage, {**FILE_META_PAGE, "total": 3}, id="FileMetaPage"),
        pytest.param(
            ErrorEnvelope,
            {"errors": [{**ERROR_DOC["errors"][0], "field": "file"}], "request_id": "r1"},
            id="ErrorEnvelope",
        ),
        pytest.param(
            JobRequest,
            {
                **SEED_REQUEST,
                "priority": "high",
                "inputs": {"images": [{"file_id": "file_abc123", "kind": "file"}]},
            },
            id="JobRequest",
        ),
        pytest.param(JobList, {**JOB_LIST, "next_cursor": None}, id="JobList"),
    ],
)
def test_unknown_nested_fields_round_trip(model: type[ApiModel], example: JSON) -> None:
    _assert_round_trip(model, example)


@pytest.mark.parametrize(
    ("enum", "value"),
    [
        (JobStatus, "SUSPENDED"),
        (InputStatus, "skipped"),
        (EventLevel, "DEBUG"),
        (FileStatus, "FILE_STATUS_ARCHIVED"),
    ],
)
def test_unknown_enum_value_parses(enum: Any, value: str) -> None:
    member = enum(value)
    assert isinstance(member, enum)
    assert member.is_known is False
    assert member.value == value
    assert str(member) == value
    assert member == value
    assert all(known.is_known for known in enum)
    assert member not in list(enum)


@pytest.mark.parametrize(
    ("model", "example", "field"),
    [
        pytest.param(JobRecord, {**JOB_GET, "status": "SUSPENDED"}, "status", id="JobStatus"),
        pytest.param(JobInput, {**INPUT_DOC, "status": "skipped"}, "status", id="InputStatus"),
        pytest.param(Event, {**EVENT_DOC_1, "level": "DEBUG"}, "level", id="EventLevel"),
        pytest.param(
            FileMeta,
            {**FILE_META_CSV, "file_status": "FILE_STATUS_ARCHIVED"},
            "file_status",
            id="FileStatus",
        ),
    ],
)
def test_unknown_enum_value_round_trips_in_model(
    model: type[ApiModel], example: JSON, field: str
) -> None:
    parsed = _assert_round_trip(model, example)
    value = getattr(parsed, field)
    assert value.is_known is False
    assert value.value == example[field]
    assert json.loads(parsed.model_dump_json(exclude_unset=True))[field] == example[field]


def test_unknown_job_status_is_not_terminal_cancellable_or_retryable() -> None:
    status = JobRecord.model_validate({**JOB_GET, "status": "SUSPENDED"}).status
    assert (status.is_terminal, status.can_cancel, status.can_retry) == (False, False, False)


def test_non_string_status_is_rejected() -> None:
    with pytest.raises(ValidationError):
        JobRecord.model_validate({**JOB_GET, "status": 3})


def test_known_enum_values_parse_to_the_members() -> None:
    assert JobRecord.model_validate(JOB_LIST_ITEM).status is JobStatus.RUNNING
    assert JobStatus("PENDING") is JobStatus.PENDING
    assert InputStatus("reference") is InputStatus.REFERENCE
    assert EventLevel("SUCCESS") is EventLevel.SUCCESS
    assert FileStatus("FILE_STATUS_CORRUPT") is FileStatus.CORRUPT


# =============================================================================================
# The job status lifecycle (§3.2)
# =============================================================================================

# status: (is_terminal, can_cancel, can_retry)
LIFECYCLE = {
    "PENDING": (False, True, False),
    "ADMITTED": (False, True, False),
    "RUNNING": (False, True, False),
    "COMPLETED": (True, False, False),
    "FAILED": (True, False, True),
    "PREEMPTED": (False, True, False),
    "CANCELLED": (True, False, True),
}


def test_lifecycle_table_covers_every_status() -> None:
    assert set(LIFECYCLE) == {status.value for status in JobStatus}


@pytest.mark.parametrize(("value", "expected"), LIFECYCLE.items())
def test_job_status_lifecycle(value: str, expected: tuple[bool, bool, bool]) -> None:
    status = JobStatus(value)
    assert status.is_known
    assert (status.is_terminal, status.can_cancel, status.can_retry) == expected


# =============================================================================================
# Timestamps (§1.4)
# =============================================================================================

TIMESTAMPS = [
    pytest.param(
        "2026-04-14T10:00:00Z", datetime(2026, 4, 14, 10, 0, 0, tzinfo=timezone.utc), id="whole"
    ),
    pytest.param(
        "2026-04-08T21:51:56.283818Z",
        datetime(2026, 4, 8, 21, 51, 56, 283818, tzinfo=timezone.utc),
        id="microseconds",
    ),
    pytest.param(
        "2026-04-27T14:32:18.421000Z",
        datetime(2026, 4, 27, 14, 32, 18, 421000, tzinfo=timezone.utc),
        id="fine-tune-trailing-zeros",
    ),
]


@pytest.mark.parametrize(("text", "expected"), TIMESTAMPS)
@pytest.mark.parametrize(
    ("model", "base", "field"),
    [
        pytest.param(JobRecord, JOB_CREATE_VOLVE, "created_at", id="JobRecord"),
        pytest.param(CancelResult, CANCEL_RESULT, "cancelled_at", id="CancelResult"),
        pytest.param(Event, EVENT_DOC_1, "created_at", id="Event"),
        pytest.param(Output, OUTPUT_DOC, "expires_at", id="Output"),
        pytest.param(Traces, TRACES, "latest_event_at", id="Traces"),
        pytest.param(InitiateUploadResponse, INITIATE_RESPONSE_PROD, "expires_at", id="Initiate"),
    ],
)
def test_timestamps_are_aware_utc_and_written_back_verbatim(
    model: type[ApiModel], base: JSON, field: str, text: str, expected: datetime
) -> None:
    example = {**base, field: text}
    parsed = _assert_round_trip(model, example)
    value = getattr(parsed, field)
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)
    assert value == expected
    assert parsed.to_json_dict()[field] == text


@pytest.mark.parametrize(("text", "expected"), TIMESTAMPS)
def test_nested_timestamps(text: str, expected: datetime) -> None:
    part = UploadPart.model_validate({**INITIATE_RESPONSE_DOC["parts"][0], "expires_at": text})
    assert part.expires_at == expected
    assert part.to_json_dict()["expires_at"] == text
    traces = Traces.model_validate({**TRACES, "points": [{**TRACES["points"][1], "t": text}]})
    assert traces.points[0].t == expected
    assert traces.to_json_dict()["points"][0]["t"] == text


def test_format_timestamp() -> None:
    assert format_timestamp(datetime(2026, 4, 14, 10, 0, 0)) == "2026-04-14T10:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 4, 14, 12, 0, 0, tzinfo=plus_two)) == (
        "2026-04-14T10:00:00Z"
    )
    assert format_timestamp(datetime(2026, 4, 14, 10, 0, 0, 5, tzinfo=timezone.utc)) == (
        "2026-04-14T10:00:00.000005Z"
    )


def test_null_timestamps_stay_null() -> None:
    job = JobRecord.model_validate(JOB_CREATE_DOC)
    assert job.started_at is None
    assert job.to_json_dict()["started_at"] is None


# =============================================================================================
# The create-job body
# =============================================================================================


def test_to_body_defaults_pipeline_type_to_batch_and_drops_nones() -> None:
    request = JobRequest(name="run", pipeline_key="machine-state-classification")
    body = request.to_body()
    assert body == {
        "name": "run",
        "pipeline_type": "batch",
        "pipeline_key": "machine-state-classification",
        "inputs": {},
        "parameters": {},
    }
    assert "pipeline_version" not in body


def test_to_body_drops_nested_nones() -> None:
    request = JobRequest(
        name="run",
        pipeline_key="image-classifier",
        inputs={"images": [FileInputItem(file_id="a.jpg")]},
        parameters={"classifier": ComponentParameters(config={"model": "resnet50"})},
    )
    body = request.to_body()
    assert body["pipeline_type"] == "batch"
    assert body["inputs"] == {"images": [{"file_id": "a.jpg"}]}
    assert body["parameters"] == {"classifier": {"config": {"model": "resnet50"}}}


def test_to_body_keeps_an_explicit_pipeline_type() -> None:
    request = JobRequest(name="ft", pipeline_type="training", pipeline_key="fine-tuning-omega")
    assert request.to_body()["pipeline_type"] == "training"


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(SEED_REQUEST, id="seed"),
        pytest.param(VOLVE_REQUEST, id="§9.1-volve"),
        pytest.param(CHECKPOINT_REQUEST, id="§4.1-checkpoint"),
    ],
)
def test_to_body_of_a_parsed_request_is_the_request(example: JSON) -> None:
    assert JobRequest.model_validate(example).to_body() == example


def test_to_body_adds_pipeline_type_when_missing() -> None:
    example = {key: value for key, value in SEED_REQUEST.items() if key != "pipeline_type"}
    request = JobRequest.model_validate(example)
    assert request.to_json_dict() == example
    assert request.to_body() == SEED_REQUEST


# =============================================================================================
# Input items (§4.1)
# =============================================================================================

INPUT_ITEM = TypeAdapter(InputItem)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param({"file_id": "volve_inference.csv"}, FileInputItem, id="file"),
        pytest.param(
            {"file_id": "volve_drilling.csv", "metadata": {"class": "drilling"}},
            FileInputItem,
            id="file-n-shot",
        ),
        pytest.param({"file_id": "x.csv", "kind": "file"}, FileInputItem, id="file-kind-file"),
        pytest.param(
            {
                "kind": "checkpoint",
                "checkpoint_id": "ckp_5kn596dy9v8wztr2fcqyhvrsa0",
                "metadata": {},
            },
            CheckpointInputItem,
            id="checkpoint",
        ),
        pytest.param(
            {"kind": "checkpoint", "checkpoint_id": "ckp_5kn596dy9v8wztr2fcqyhvrsa0"},
            CheckpointInputItem,
            id="checkpoint-no-metadata",
        ),
    ],
)
def test_input_item_kind(item: JSON, expected: type[ApiModel]) -> None:
    parsed = INPUT_ITEM.validate_python(item)
    assert type(parsed) is expected
    assert parsed.to_json_dict() == item


def test_input_item_without_file_or_checkpoint_is_rejected() -> None:
    with pytest.raises(ValidationError):
        INPUT_ITEM.validate_python({"metadata": {"class": "normal"}})


def test_request_inputs_parse_into_their_kinds() -> None:
    request = JobRequest.model_validate(CHECKPOINT_REQUEST)
    inference = request.inputs["worker.inference"][0]
    n_shot = request.inputs["worker.n_shots"][0]
    checkpoint = request.inputs["worker.fine_tune_checkpoint"][0]
    assert isinstance(inference, FileInputItem)
    assert inference.file_id == "tep_inference.csv"
    assert isinstance(n_shot, FileInputItem)
    assert n_shot.metadata == {"class": "normal"}
    assert isinstance(checkpoint, CheckpointInputItem)
    assert checkpoint.checkpoint_id == "ckp_5kn596dy9v8wztr2fcqyhvrsa0"
    assert checkpoint.metadata == {}

    volve = JobRequest.model_validate(VOLVE_REQUEST)
    items = [item for port in volve.inputs.values() for item in port]
    assert all(isinstance(item, FileInputItem) for item in items)
    assert [item.file_id for item in items] == [
        "volve_inference.csv",
        "volve_drilling.csv",
        "volve_not_drilling.csv",
    ]


# =============================================================================================
# Pages
# =============================================================================================


@pytest.mark.parametrize(
    ("model", "example", "items_key"),
    [
        pytest.param(JobList, JOB_LIST, "jobs", id="JobList"),
        pytest.param(EventList, EVENT_LIST_DOC, "events", id="EventList"),
        pytest.param(EventList, EVENT_LIST_VOLVE, "events", id="EventList-volve"),
        pytest.param(ProgressList, PROGRESS_LIST, "entries", id="ProgressList"),
        pytest.param(InputList, INPUT_LIST, "inputs", id="InputList"),
        pytest.param(InputProgressList, INPUT_PROGRESS_LIST, "items", id="InputProgressList"),
        pytest.param(OutputList, OUTPUT_LIST_VOLVE, "outputs", id="OutputList"),
        pytest.param(PipelineList, PIPELINE_LIST, "pipelines", id="PipelineList"),
    ],
)
def test_page_rows(model: type[Page[Any]], example: JSON, items_key: str) -> None:
    page = model.model_validate(example)
    assert model.items_field == items_key
    rows = page.rows
    assert rows is getattr(page, items_key)
    assert [row.to_json_dict() for row in rows] == example[items_key]
    assert page.total == example["total"]


def test_page_rows_item_types() -> None:
    assert all(isinstance(row, JobRecord) for row in JobList.model_validate(JOB_LIST).rows)
    assert all(isinstance(row, Event) for row in EventList.model_validate(EVENT_LIST_DOC).rows)
    assert all(
        isinstance(row, ProgressEntry) for row in ProgressList.model_validate(PROGRESS_LIST).rows
    )
    assert all(isinstance(row, JobInput) for row in InputList.model_validate(INPUT_LIST).rows)
    assert all(
        isinstance(row, InputProgressItem)
        for row in InputProgressList.model_validate(INPUT_PROGRESS_LIST).rows
    )
    assert all(isinstance(row, Output) for row in OutputList.model_validate(OUTPUT_LIST_DOC).rows)
    assert all(isinstance(row, Pipeline) for row in PipelineList.model_validate(PIPELINE_LIST).rows)


def test_page_without_offset_and_limit() -> None:
    page = EventList.model_validate(EVENT_LIST_VOLVE)
    assert (page.offset, page.limit) == (0, None)
    assert "offset" not in page.to_json_dict()
    assert "limit" not in page.to_json_dict()


# =============================================================================================
# Traces' ETag
# =============================================================================================


def test_traces_etag_is_not_dumped() -> None:
    traces = Traces.model_validate({**TRACES, "etag": 'W/"42"'})
    assert traces.etag == 'W/"42"'
    assert traces.to_json_dict() == TRACES
    assert "etag" not in traces.model_dump()
    assert "etag" not in json.loads(traces.model_dump_json())

    built = Traces.model_validate(TRACES)
    built.etag = '"43"'
    assert built.to_json_dict() == TRACES
