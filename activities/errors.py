"""Error types shared by activities, the workflow and the starter.

Activities turn every TapRaise failure into a Temporal `ApplicationError` whose `type` is one of
these constants; the workflow and the starter match on them. Defined once, here.
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
