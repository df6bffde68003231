"""Pydantic models of every resource and envelope of the v0.5 Batch + Files API.

One contract shared by the client (``atai_magics.api.client``) and the embedded local backend
(``atai_magics.local``), so the two cannot drift apart. Field names follow the platform
exactly (reference: ``archetype-batch-api.md`` §§3-10).

Every model keeps fields it does not know (``extra="allow"``): the platform evolves, and a new
field must never break parsing. Enums are *open*: an unknown status parses to a pseudo-member
instead of failing. ``model_dump(mode="json", exclude_unset=True)`` gives back the JSON a model
was parsed from.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "ApiModel",
    "CancelResult",
    "CheckpointInputItem",
    "CheckpointPartsRequest",
    "CheckpointPartsResponse",
    "CompleteUploadRequest",
    "CompleteUploadResponse",
    "ComponentParameters",
    "DataRef",
    "DeleteResult",
    "ErrorDetail",
    "ErrorEnvelope",
    "Event",
    "EventLevel",
    "EventList",
    "FileInputItem",
    "FileMeta",
    "FileMetaPage",
    "FileStatus",
    "FileUploadResult",
    "FilesInfo",
    "InitiateUploadRequest",
    "InitiateUploadResponse",
    "InputItem",
    "InputList",
    "InputProgressCounts",
    "InputProgressItem",
    "InputProgressList",
    "InputStatus",
    "JobInput",
    "JobList",
    "JobRecord",
    "JobRequest",
    "JobStatus",
    "LegacyErrorEnvelope",
    "Output",
    "OutputList",
    "OutputPort",
    "Page",
    "PartToken",
    "PartUrlsRequest",
    "PartUrlsResponse",
    "Pipeline",
    "PipelineList",
    "PipelineSchema",
    "Port",
    "ProgressEntry",
    "ProgressList",
    "QueueDepth",
    "QueueDepths",
    "RetryResult",
    "Timestamp",
    "TracePoint",
    "Traces",
    "UploadPart",
    "format_timestamp",
]


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, whole seconds unless there is a fraction (as the platform)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    spec = "seconds" if value.microsecond == 0 else "microseconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


Timestamp = Annotated[
    datetime, PlainSerializer(format_timestamp, return_type=str, when_used="json")
]
"""A platform timestamp: parsed to an aware ``datetime``, written back as RFC 3339 ``Z``."""


class ApiModel(BaseModel):
    """Base of every platform model: keeps unknown fields, compares by value."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object this model stands for (only the fields that were set)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class _OpenEnum(str, Enum):
    """A string enum that accepts values it does not know, so new platform states parse."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member

    @property
    def is_known(self) -> bool:
        return self._name_ in type(self).__members__

    def __str__(self) -> str:
        return str(self.value)


class JobStatus(_OpenEnum):
    PENDING = "PENDING"
    ADMITTED = "ADMITTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not move again unless retried (every public script agrees)."""
        return self in _TERMINAL

    @property
    def can_cancel(self) -> bool:
        return self in _CANCELLABLE

    @property
    def can_retry(self) -> bool:
        return self in _RETRYABLE


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
_CANCELLABLE = frozenset(
    {JobStatus.PENDING, JobStatus.ADMITTED, JobStatus.RUNNING, JobStatus.PREEMPTED}
)
_RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class InputStatus(_OpenEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    REFERENCE = "reference"


class EventLevel(_OpenEnum):
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class FileStatus(_OpenEnum):
    """``file_status`` of file metadata (§10.6); the upload-complete response uses other words."""

    UNKNOWN = "FILE_STATUS_UNKNOWN"
    REGISTERED = "FILE_STATUS_REGISTERED"
    INGESTING = "FILE_STATUS_INGESTING"
    INGESTED = "FILE_STATUS_INGESTED"
    IN_MEMORY = "FILE_STATUS_IN_MEMORY"
    IN_COLD_STORAGE = "FILE_STATUS_IN_COLD_STORAGE"
    CORRUPT = "FILE_STATUS_CORRUPT"


# --- the create-job body ------------------------------------------------------------------


class FileInputItem(ApiModel):
    """An input file, named by its ``file_id`` (the filename); n-shot ports set ``class``."""

    kind: Literal["file"] | None = None
    file_id: str
    metadata: dict[str, Any] | None = None


class CheckpointInputItem(ApiModel):
    """A fine-tuned checkpoint given as an input (seen on MSC's ``worker.fine_tune_checkpoint``)."""

    kind: Literal["checkpoint"]
    checkpoint_id: str
    metadata: dict[str, Any] | None = None


InputItem = CheckpointInputItem | FileInputItem


class ComponentParameters(ApiModel):
    """One component's parameters: how many workers, and its free-form config."""

    parallelism: int | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class JobRequest(ApiModel):
    """The body of ``POST /batch/jobs``."""

    name: str
    pipeline_type: str = "batch"
    pipeline_key: str
    pipeline_version: str | None = None
    inputs: dict[str, list[InputItem]] = Field(default_factory=dict)
    parameters: dict[str, ComponentParameters] = Field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        """The JSON body to send: every field with a value, defaults included."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- jobs ---------------------------------------------------------------------------------


class InputProgressCounts(ApiModel):
    """Per-status counts over the *tracked* inputs of a job (reference inputs excluded)."""

    job_id: str | None = None
    pending: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.processing + self.completed + self.failed


class JobRecord(ApiModel):
    """A job as the API returns it (the user-facing handle is ``atai_magics.Job``)."""

    id: str
    org_id: str | None = None
    name: str | None = None
    pipeline_type: str | None = None
    pipeline_key: str | None = None
    pipeline_version: str | None = None
    status: JobStatus
    parameters: dict[str, ComponentParameters] = Field(default_factory=dict)
    retry_count: int = 0
    preemption_count: int = 0
    queue_position: int | None = None
    queue_depth: int | None = None
    input_progress: InputProgressCounts | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    failed_at: Timestamp | None = None
    cancelled_at: Timestamp | None = None
    error: dict[str, Any] | str | None = None


class CancelResult(ApiModel):
    id: str
    status: JobStatus
    cancelled_at: Timestamp | None = None


class RetryResult(ApiModel):
    id: str
    status: JobStatus
    retry_count: int | None = None


class DeleteResult(ApiModel):
    id: str
    deleted: bool


class QueueDepth(ApiModel):
    pipeline_type: str
    depth: int


class QueueDepths(ApiModel):
    queues: list[QueueDepth] = Field(default_factory=list)


class Event(ApiModel):
    id: int | None = None
    event_type: str | None = None
    level: EventLevel
    message: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    input_id: str | None = None
    index: int | None = None
    created_at: Timestamp | None = None


class ProgressEntry(ApiModel):
    id: int | None = None
    kind: str
    step: int | None = None
    message: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)
    input_id: str | None = None
    index: int | None = None
    created_at: Timestamp | None = None


class DataRef(ApiModel):
    """Where an input's or output's bytes are: ``ref`` is a URL (presigned) or an API path."""

    ref: str
    filename: str
    file_type: str | None = None
    file_extension: str | None = None
    num_bytes: int | None = None
    metadata: dict[str, Any] | None = None
    file_tags: dict[str, Any] | None = None
    file_attributes: dict[str, Any] | None = None


class JobInput(ApiModel):
    id: str
    job_id: str | None = None
    port_name: str
    file_id: str | None = None
    data: DataRef | None = None
    status: InputStatus
    error_message: str | None = None
    created_at: Timestamp | None = None
    completed_at: Timestamp | None = None


class InputProgressItem(ApiModel):
    input: JobInput
    latest_progress: ProgressEntry | None = None
    step: int | None = None


class TraceFiles(ApiModel):
    completed: int = 0
    failed: int = 0


class TraceItems(ApiModel):
    success: int = 0
    failed: int = 0


class TracePoint(ApiModel):
    t: Timestamp
    step: int
    files: TraceFiles
    items: dict[str, TraceItems] = Field(default_factory=dict)


class Traces(ApiModel):
    job_id: str
    bucket_seconds: float
    latest_event_at: Timestamp | None = None
    points: list[TracePoint] = Field(default_factory=list)
    etag: str | None = Field(default=None, exclude=True)
    """The response's ``ETag``; pass it back to get ``None`` while nothing has changed."""


class Output(ApiModel):
    id: str
    job_id: str | None = None
    port_name: str | None = None
    input_id: str | None = None
    input_file_id: str | None = None
    data: DataRef
    expires_at: Timestamp | None = None
    created_at: Timestamp | None = None


# --- pagination ---------------------------------------------------------------------------

T = TypeVar("T")


class Page(ApiModel, Generic[T]):
    """``{total, offset, limit, <items>}``: the envelope of every Batch API list."""

    items_field: ClassVar[str]
    total: int
    offset: int = 0
    limit: int | None = None

    @property
    def rows(self) -> list[T]:
        """This page's items, whatever the envelope calls them."""
        rows: list[T] = getattr(self, self.items_field)
        return rows


class JobList(Page[JobRecord]):
    items_field = "jobs"
    jobs: list[JobRecord]


class EventList(Page[Event]):
    items_field = "events"
    job_id: str | None = None
    events: list[Event]


class ProgressList(Page[ProgressEntry]):
    items_field = "entries"
    job_id: str | None = None
    entries: list[ProgressEntry]


class InputList(Page[JobInput]):
    items_field = "inputs"
    job_id: str | None = None
    inputs: list[JobInput]


class InputProgressList(Page[InputProgressItem]):
    items_field = "items"
    job_id: str | None = None
    items: list[InputProgressItem]


class OutputList(Page[Output]):
    items_field = "outputs"
    job_id: str | None = None
    outputs: list[Output]


# --- pipeline registry --------------------------------------------------------------------


class Port(ApiModel):
    """An input port: how files given to it are read and shared among workers."""

    name: str | None = None
    description: str | None = None
    mode: str | None = None
    distribute: str | None = None
    required: bool = False
    tracked: bool = True


class OutputPort(ApiModel):
    name: str | None = None
    description: str | None = None


class Pipeline(ApiModel):
    id: str
    pipeline_key: str
    pipeline_version: str
    name: str | None = None
    description: str | None = None
    pipeline_type: str | None = None
    components: dict[str, str] = Field(default_factory=dict)
    default_config: dict[str, ComponentParameters] = Field(default_factory=dict)
    config_schema: dict[str, Any] = Field(default_factory=dict)
    user_config_schema: dict[str, Any] = Field(default_factory=dict)
    edges: list[dict[str, Any]] = Field(default_factory=list)
    inputs: dict[str, Port] = Field(default_factory=dict)
    outputs: dict[str, OutputPort] = Field(default_factory=dict)
    retry_policy: dict[str, Any] = Field(default_factory=dict)
    visibility: str | None = None
    org_id: str | None = None
    status: str | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class PipelineList(Page[Pipeline]):
    items_field = "pipelines"
    pipelines: list[Pipeline]


class PipelineSchema(ApiModel):
    """The user-facing config schema and the ports of one pipeline version."""

    id: str
    pipeline_key: str
    pipeline_version: str
    user_schema: dict[str, Any] | str = Field(default_factory=dict)
    config_schema: dict[str, Any] | str = Field(default_factory=dict)
    inputs: dict[str, Port] = Field(default_factory=dict)
    outputs: dict[str, OutputPort] = Field(default_factory=dict)


# --- files --------------------------------------------------------------------------------


class FileUploadResult(ApiModel):
    """The answer to a simple, base64 or delete call; ``is_valid`` must be checked."""

    is_valid: bool
    file_id: str | None = None
    file_uid: str | None = None


class FileMeta(ApiModel):
    file_id: str
    file_uid: str | None = None
    is_valid: bool | None = None
    file_type: str | None = None
    num_bytes: int | None = None
    file_status: FileStatus | None = None
    ingested: bool | None = None
    file_index: int | None = None
    file_tags: dict[str, Any] | None = None
    file_attributes: dict[str, Any] | None = None


class FileMetaPage(ApiModel):
    """A page of file metadata in the cursor style (newest first). Shard-style bare arrays
    are wrapped into this shape by the client, with ``has_more`` false."""

    data: list[FileMeta]
    has_more: bool = False
    next_cursor: str | None = None
    prev_cursor: str | None = None
    style: Literal["cursor", "shard"] = Field(default="cursor", exclude=True)
    """Which list style the server answered in (not part of the JSON)."""


class FilesInfo(ApiModel):
    num_files: int
    num_bytes: int
    num_ingested: int | None = None
    last_updated: float | None = None
    """A Unix epoch float, unlike every other timestamp of the API."""


class InitiateUploadRequest(ApiModel):
    filename: str
    file_type: str
    num_bytes: int
    resume_if_started: bool = False


class UploadPart(ApiModel):
    """One presigned part URL: PUT bytes ``[offset, offset + length)`` to ``url``."""

    part_number: int
    url: str
    offset: int
    length: int
    expires_at: Timestamp | None = None


class InitiateUploadResponse(ApiModel):
    upload_id: str
    file_uid: str | None = None
    file_name: str | None = None
    total_bytes: int | None = None
    num_parts: int
    part_size: int | None = None
    is_resume: bool = False
    integrity_algorithm: str | None = None
    strategy: str | None = None
    expires_at: Timestamp | None = None
    parts: list[UploadPart]


class PartUrlsRequest(ApiModel):
    part_numbers: list[int]


class PartUrlsResponse(ApiModel):
    parts: list[UploadPart]


class PartToken(ApiModel):
    """A stored part: its number and the ``ETag`` its PUT returned (quotes kept)."""

    part_number: int
    part_token: str


class CheckpointPartsRequest(ApiModel):
    parts: list[PartToken]


class CheckpointPartsResponse(ApiModel):
    num_checkpointed: int


class CompleteUploadRequest(ApiModel):
    parts: list[PartToken] = Field(default_factory=list)
    integrity_checksum: str | None = None


class CompleteUploadResponse(ApiModel):
    file_uid: str | None = None
    file_name: str
    num_bytes: int | None = None
    file_status: str | None = None
    file_attributes: dict[str, Any] | None = None


# --- errors -------------------------------------------------------------------------------


class ErrorDetail(ApiModel):
    code: str | None = None
    message: str | None = None
    suggestion: str | None = None
    error_uid: str | None = None


class ErrorEnvelope(ApiModel):
    """``{"errors": [...]}``: the documented error body; there may be several errors."""

    errors: list[ErrorDetail]


class LegacyErrorEnvelope(ApiModel):
    """``{"detail": ...}``: what some auth failures still answer (FastAPI's default)."""

    detail: str | list[Any] | dict[str, Any]
