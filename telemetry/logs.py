"""Log lines for the worker and the gateway: plain text, or one JSON object a line.

`LOG_FORMAT=json` writes every record of every logger (ours, the SDK's, uvicorn's, and the
Temporal core's, forwarded) as one JSON object: `time`, `level`, `logger`, `message`, and where
the record has them `workflow_id`, `call_uuid`, `run_id` and `activity` (the SDK puts a
workflow's or an activity's identity in the record's `extra`). Nothing else of a record's
`extra` is copied: a field added for one log line must never carry a person's data into every
line by accident.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from temporalio import activity, workflow

from telemetry.settings import LogFormat

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The workflow ids the project gives calls: `call-<call uuid>`.
_CALL_PREFIX: Final = "call-"
# Fields a record may carry itself (`extra={...}`) that the JSON line keeps.
_OWN_FIELDS: Final = ("workflow_id", "call_uuid", "run_id", "activity")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(identity(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def identity(record: logging.LogRecord) -> dict[str, str]:
    """The workflow, run, call and activity a record is about, as far as it says."""
    found: dict[str, str] = {}
    workflow_info = getattr(record, "temporal_workflow", None)
    if isinstance(workflow_info, Mapping):
        _keep(found, "workflow_id", workflow_info.get("workflow_id"))
        _keep(found, "run_id", workflow_info.get("run_id"))
    activity_info = getattr(record, "temporal_activity", None)
    if isinstance(activity_info, Mapping):
        _keep(found, "workflow_id", activity_info.get("workflow_id"))
        _keep(found, "run_id", activity_info.get("workflow_run_id"))
        _keep(found, "activity", activity_info.get("activity_type"))
    for name in _OWN_FIELDS:
        _keep(found, name, getattr(record, name, None))
    workflow_id = found.get("workflow_id", "")
    if "call_uuid" not in found and workflow_id.startswith(_CALL_PREFIX):
        found["call_uuid"] = workflow_id.removeprefix(_CALL_PREFIX)
    return found


def _keep(found: dict[str, str], name: str, value: object) -> None:
    if name not in found and isinstance(value, str) and value:
        found[name] = value


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger's records to standard error, as text or as JSON lines.

    Replaces the root logger's handlers (a second call reconfigures). With JSON, the SDK's
    workflow and activity loggers stop appending their details to the message: the line carries
    them as fields.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    structured = log_format is LogFormat.JSON
    workflow.logger.workflow_info_on_message = not structured
    activity.logger.activity_info_on_message = not structured
