"""Settings of the starter CLI, from environment variables and `.env`.

The Temporal connection itself is not here: `starter.connect.connect()` reads Temporal's own
variables (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, …).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows.messages import TASK_QUEUE


class StarterSettings(BaseSettings):
    """What the CLI needs (and the gateway too, which extends it).

    Attributes:
        task_queue: `CALLS_TASK_QUEUE`, the task queue new calls are started on.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    task_queue: str = Field(
        default=TASK_QUEUE, validation_alias=AliasChoices("CALLS_TASK_QUEUE", "task_queue")
    )
