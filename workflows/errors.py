"""Every failure type the project's workflow and activities raise, named once.

A Temporal `ApplicationError` carries one of these as its `type`: activities turn every TapRaise
failure into one, the workflow rejects updates and fails bad starts with one, and the workflow,
the starter and the gateway match on them.
"""

from __future__ import annotations

from typing import Final

# TapRaise refused the request: retrying cannot help (non-retryable).
TAPRAISE_BAD_REQUEST: Final = "TapRaiseBadRequest"  # 400
TAPRAISE_FORBIDDEN: Final = "TapRaiseForbidden"  # 403: final on create, retried on later actions
TAPRAISE_NOT_FOUND: Final = "TapRaiseNotFound"  # 404
# Passing faults: Temporal retries them with backoff.
TAPRAISE_UNAUTHORIZED: Final = "TapRaiseUnauthorized"  # 401, never final (credentials rotate)
TAPRAISE_RATE_LIMITED: Final = "TapRaiseRateLimited"  # 429, honours Retry-After
TAPRAISE_UNAVAILABLE: Final = "TapRaiseUnavailable"  # 5xx
TAPRAISE_TIMEOUT: Final = "TapRaiseTimeout"
TAPRAISE_CONNECTION: Final = "TapRaiseConnection"
TAPRAISE_STATUS: Final = "TapRaiseStatus"  # any other unexpected status
# The call is already in a different final state than the one asked for (non-retryable).
CALL_IN_OTHER_FINAL_STATE: Final = "CallInOtherFinalState"
# A 409 on create, but the existing call is not visible to this service account.
CALL_EXISTS_BUT_NOT_VISIBLE: Final = "CallExistsButNotVisible"

# The call's policy cannot be resolved (a bad policies file or bad overrides; non-retryable).
INVALID_POLICY: Final = "InvalidCallPolicy"
# Raised by the workflow: an update's rejection (the reason is its message), and a start whose
# input is invalid (the workflow fails at once, naming the field).
ACTION_REJECTED: Final = "CallActionRejected"
INVALID_INPUT: Final = "InvalidCallInput"

# What is final whatever an error says of itself. A 403 is not listed: it is final on a create
# only, where the activity marks it so; on a later action it is retried like a 401.
NON_RETRYABLE: Final = frozenset(
    {
        TAPRAISE_BAD_REQUEST,
        TAPRAISE_NOT_FOUND,
        CALL_IN_OTHER_FINAL_STATE,
        CALL_EXISTS_BUT_NOT_VISIBLE,
    }
)
