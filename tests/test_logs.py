"""JSON log lines: one object a record, with the workflow and activity a record is about, and
nothing of a record's `extra` that was not asked for (a worker's own lines are checked in
`test_metrics`, the gateway's in `test_gateway_metrics`)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from temporalio import activity, workflow
from temporalio.testing import ActivityEnvironment

from telemetry.logs import JsonFormatter, configure_logging
from telemetry.settings import LogFormat

CALL = str(uuid.uuid4())
PERSON = str(uuid.uuid4())


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the SDK's activity logger writes, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = activity.logger.base_logger
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_an_activity_line_names_its_workflow_call_run_and_activity(
    json_lines: io.StringIO,
) -> None:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info,
        activity_type="complete_call",
        workflow_id=f"call-{CALL}",
        workflow_run_id="run-1",
    )

    async def complete() -> None:
        activity.logger.warning("TapRaise is slow", extra={"person_uuid": PERSON})

    await environment.run(complete)
    [line] = json_lines.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["logger"] == "temporalio.activity"
    assert record["message"].startswith("TapRaise is slow")
    assert record["workflow_id"] == f"call-{CALL}" and record["call_uuid"] == CALL
    assert record["run_id"] == "run-1" and record["activity"] == "complete_call"
    assert record["time"].endswith("+00:00")
    assert PERSON not in line  # an extra field nobody asked for stays out


def test_a_record_without_a_workflow_has_the_four_fields_and_its_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        failure = (type(exc), exc, exc.__traceback__)
    record = logging.getLogger("gateway").makeRecord(
        "gateway", logging.ERROR, __file__, 1, "failed: %s", ("x",), exc_info=failure
    )
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "message", "exception"}
    assert line["message"] == "failed: x" and "ValueError: boom" in line["exception"]


def test_json_lines_keep_the_workflow_details_out_of_the_message() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", LogFormat.JSON)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert not workflow.logger.workflow_info_on_message
        assert not activity.logger.activity_info_on_message
        configure_logging("warning", LogFormat.TEXT)
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        assert workflow.logger.workflow_info_on_message
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        workflow.logger.workflow_info_on_message = True
        activity.logger.activity_info_on_message = True
