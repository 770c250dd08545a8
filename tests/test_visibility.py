"""The visibility query a user adds to `list`: parsed, limited to the call fields, written back."""

from __future__ import annotations

import pytest

from starter.service import InvalidInput, ListFilters
from starter.visibility import (
    BUILT_IN_FIELDS,
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    QUERY_FIELDS,
    QueryError,
    call_query_clause,
    quote_literal,
    tokenize,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("query", "clause"),
    [
        pytest.param("CallPhase = 'due'", "CallPhase = 'due'", id="comparison"),
        pytest.param('CallPhase="due"', "CallPhase = 'due'", id="double_quotes_no_spaces"),
        pytest.param(
            "CallAttempts >= 2 and CallPhase != 'due'",
            "CallAttempts >= 2 AND CallPhase != 'due'",
            id="keywords_in_any_case",
        ),
        pytest.param(
            "CallAttempts < -1.5 OR CallAttempts <= 0 OR CallAttempts > 3",
            "CallAttempts < -1.5 OR CallAttempts <= 0 OR CallAttempts > 3",
            id="numbers",
        ),
        pytest.param(
            "CallPhase IN ('due', \"scheduled\")",
            "CallPhase IN ('due', 'scheduled')",
            id="in",
        ),
        pytest.param("CallPhase not in ('due')", "CallPhase NOT IN ('due')", id="not_in"),
        pytest.param(
            "NextAttemptAt BETWEEN '2026-01-01T00:00:00Z' AND '2026-02-01T00:00:00Z'",
            "NextAttemptAt BETWEEN '2026-01-01T00:00:00Z' AND '2026-02-01T00:00:00Z'",
            id="between",
        ),
        pytest.param(
            "PersonUuid STARTS_WITH 'ab'", "PersonUuid STARTS_WITH 'ab'", id="starts_with"
        ),
        pytest.param(
            "NextAttemptAt is null or NextAttemptAt IS NOT NULL",
            "NextAttemptAt IS NULL OR NextAttemptAt IS NOT NULL",
            id="is_null",
        ),
        pytest.param(
            "NOT (CallPhase = 'due' OR (CallAttempts = 1 AND CallType = 'winback'))",
            "NOT (CallPhase = 'due' OR (CallAttempts = 1 AND CallType = 'winback'))",
            id="nesting_and_not",
        ),
        pytest.param("`CallPhase` = 'due'", "CallPhase = 'due'", id="backquoted_name"),
        pytest.param(
            r"CallType = 'it\'s' OR CallType = 'a''b' OR CallType = 'c\\d'",
            r"CallType = 'it\'s' OR CallType = 'a\'b' OR CallType = 'c\\d'",
            id="escapes_written_back_one_way",
        ),
        pytest.param(
            "TaskQueue = 'calls' AND ExecutionStatus = 'Running'",
            "TaskQueue = 'calls' AND ExecutionStatus = 'Running'",
            id="built_in_fields",
        ),
    ],
)
def test_queries_in_the_grammar_are_written_back(query: str, clause: str) -> None:
    assert call_query_clause(query) == clause
    # What is written back parses to itself.
    assert call_query_clause(clause) == clause


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param(
            "') OR (WorkflowType != 'CallWorkflow'",
            "unterminated string starting at column 37",
            id="breaking_out_of_the_clause",
        ),
        pytest.param(
            "CallPhase = 'due') OR (WorkflowType != 'CallWorkflow'",
            "unbalanced ')' at column 18",
            id="closing_the_clause",
        ),
        pytest.param(
            "WorkflowType = 'OtherWorkflow'", "'WorkflowType' (column 1) is not", id="type"
        ),
        pytest.param(
            "TemporalScheduledById = 'x'", "is not a field you can filter on", id="other_built_in"
        ),
        pytest.param("callPhase = 'due'", "did you mean CallPhase?", id="misspelt_field"),
        pytest.param("((CallPhase = 'due')", "unbalanced '(' at column 1", id="open_paren"),
        pytest.param("CallPhase = 'due", "unterminated string starting at column 13", id="string"),
        pytest.param("`CallPhase = 'due'", "unterminated `name`", id="backquote"),
        pytest.param("CallPhase = 'due' -- rest", "comments are not allowed", id="dash_comment"),
        pytest.param("CallPhase = 'due' /* x */", "comments are not allowed", id="block_comment"),
        pytest.param("CallPhase = 'due' # x", "comments are not allowed", id="hash_comment"),
        pytest.param("CallPhase = 'due'; DROP", "';' is not allowed here", id="semicolon"),
        pytest.param("CallPhase = CallType", "expected a quoted string or a number", id="column"),
        pytest.param("CallPhase = 'a' ORDER BY StartTime", "expected AND or OR", id="order_by"),
        pytest.param("CallPhase <> 'a'", "expected a quoted string or a number", id="diamond"),
        pytest.param("CallPhase", "expected a comparison", id="no_operator"),
        pytest.param("CallPhase NOT = 'a'", "expected IN, BETWEEN or STARTS_WITH", id="bad_not"),
        pytest.param("CallPhase IN ()", "expected a quoted string or a number", id="empty_in"),
        pytest.param("CallPhase IN ('a' 'b')", "expected ')'", id="in_without_comma"),
        pytest.param("CallPhase STARTS_WITH 3", "expected a quoted string", id="prefix_number"),
        pytest.param("CallPhase IS 'x'", "expected NULL", id="is_value"),
        pytest.param("CallPhase = 'a' AND", "expected a field name at the end", id="dangling_and"),
        pytest.param("CallType = 'a\\x'", "unknown escape \\x", id="unknown_escape"),
        pytest.param("CallAttempts = 3abc", "'3' is not allowed here", id="number_then_letters"),
        pytest.param("CallPhase = 'a' || 1", "'|' is not allowed here", id="operator"),
        pytest.param("CallType = \\'x'", "'\\\\' is not allowed here", id="bare_backslash"),
        pytest.param("", "the query is empty", id="empty"),
        pytest.param("   ", "the query is empty", id="blank"),
        pytest.param(
            "(" * (MAX_DEPTH + 1) + "CallPhase = 'a'" + ")" * (MAX_DEPTH + 1),
            f"nests deeper than {MAX_DEPTH} levels",
            id="deep",
        ),
        pytest.param(
            "NOT " * (MAX_DEPTH + 1) + "CallPhase = 'a'",
            f"nests deeper than {MAX_DEPTH} levels",
            id="deep_not",
        ),
        pytest.param(
            "CallType = '" + "x" * MAX_QUERY_LENGTH + "'",
            f"longer than {MAX_QUERY_LENGTH} characters",
            id="long",
        ),
    ],
)
def test_queries_outside_the_grammar_are_refused_saying_why(query: str, message: str) -> None:
    with pytest.raises(QueryError) as refused:
        call_query_clause(query)
    assert message in str(refused.value)


def test_the_fields_are_the_contracts_and_a_few_of_temporals() -> None:
    assert "WorkflowType" not in QUERY_FIELDS
    assert set(QUERY_FIELDS) == {
        "CallStatus", "CallPhase", "CallType", "PersonUuid", "CallingOrganizationUuid",
        "CallAttempts", "NextAttemptAt", *BUILT_IN_FIELDS,
    }  # fmt: skip
    for name in QUERY_FIELDS:
        assert call_query_clause(f"{name} IS NOT NULL") == f"{name} IS NOT NULL"


@pytest.mark.parametrize(
    "value", ["plain", "it's", 'say "hi"', "back\\slash", "\\'", "line\nbreak", "' OR '1'='1"]
)
def test_a_literal_written_back_reads_as_the_same_value(value: str) -> None:
    (token,) = tokenize(quote_literal(value))
    assert (token.kind, token.value) == ("string", value)


def test_list_filters_and_the_query_as_one_parenthesised_clause() -> None:
    filters = ListFilters.parse(phase="due", query="CallAttempts >= 2 or CallType = 'winback'")
    assert filters.to_query() == (
        "WorkflowType = 'CallWorkflow' AND CallPhase = 'due' "
        "AND (CallAttempts >= 2 OR CallType = 'winback')"
    )


def test_list_filters_refuse_a_bad_query_naming_it() -> None:
    with pytest.raises(InvalidInput) as refused:
        ListFilters.parse(phase="ringing", query="') OR (WorkflowType != 'CallWorkflow'")
    assert refused.value.problems[0].startswith("phase: ")
    assert refused.value.problems[1] == "query: unterminated string starting at column 37"
    # Filters built without `parse` are checked when the query is made.
    with pytest.raises(InvalidInput, match=r"^query: 'WorkflowType'"):
        ListFilters(query="WorkflowType != 'CallWorkflow'").to_query()
