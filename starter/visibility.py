"""The raw visibility query a user may add to `list` (CLI `--query`, gateway `GET /calls?query=`).

Temporal's list filter is a SQL-like language; the service ANDs the user's text after
`WorkflowType = 'CallWorkflow'`. Passed on as written, a text such as
`') OR (WorkflowType != 'CallWorkflow'` would close that clause and list every workflow in the
namespace. So the text is parsed here with a small grammar — comparisons of allowed fields with
literal values, joined by AND/OR/NOT and parentheses — and the clause sent to Temporal is written
back from the parse, never copied: what Temporal reads is exactly what was checked.

The fields allowed are the contract's search attributes and a short list of Temporal's own that
describe a run; `WorkflowType` is not one of them (the service sets it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from workflows.messages import CallSearchAttributes

# Temporal's own search attributes that describe one call's run. `WorkflowType` is left out on
# purpose (the service scopes every list to the call workflow), and so are the ones of other
# features (schedules, deployments, batch jobs).
BUILT_IN_FIELDS: Final = (
    "WorkflowId",
    "RunId",
    "ExecutionStatus",
    "StartTime",
    "CloseTime",
    "ExecutionTime",
    "ExecutionDuration",
    "HistoryLength",
    "TaskQueue",
)
QUERY_FIELDS: Final = (*(key.name for key in CallSearchAttributes.ALL), *BUILT_IN_FIELDS)

# Far beyond any filter a person writes, and short enough to keep the parse cheap.
MAX_QUERY_LENGTH: Final = 2_000
MAX_DEPTH: Final = 20

KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "IN", "BETWEEN", "STARTS_WITH", "IS", "NULL"})
COMPARISONS: Final = ("=", "!=", "<=", ">=", "<", ">")

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?![\w.])")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = frozenset(" \t\r\n")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


class QueryError(ValueError):
    """The query is not in the grammar; the message says where and why."""


@dataclass(frozen=True)
class Token:
    """One token: its kind (`name`, `keyword`, `string`, `number`, `op`, `(`, `)`, `,`), its
    value (a keyword upper-cased, a string unescaped) and where it starts (1-based column)."""

    kind: str
    value: str
    column: int


def tokenize(text: str) -> list[Token]:
    """The tokens of a visibility query.

    Raises:
        QueryError: for an unterminated string or backquoted name, a comment, a semicolon or any
            character outside the grammar.
    """
    return list(_tokens(text))


def _tokens(text: str) -> Iterator[Token]:
    i = 0
    while i < len(text):
        ch = text[i]
        column = i + 1
        if ch in _SPACE:
            i += 1
        elif text.startswith(("--", "/*", "#"), i):
            raise QueryError(f"comments are not allowed (column {column})")
        elif ch in "'\"":
            value, i = _string(text, i)
            yield Token("string", value, column)
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise QueryError(f"unterminated `name` starting at column {column}")
            yield Token("name", text[i + 1 : end], column)
            i = end + 1
        elif ch in "(),":
            yield Token(ch, ch, column)
            i += 1
        elif op := next((op for op in COMPARISONS if text.startswith(op, i)), None):
            yield Token("op", op, column)
            i += len(op)
        elif number := _NUMBER.match(text, i):
            yield Token("number", number.group(), column)
            i = number.end()
        elif word := _IDENTIFIER.match(text, i):
            upper = word.group().upper()
            if upper in KEYWORDS:
                yield Token("keyword", upper, column)
            else:
                yield Token("name", word.group(), column)
            i = word.end()
        else:
            raise QueryError(f"{ch!r} is not allowed here (column {column})")


def _string(text: str, start: int) -> tuple[str, int]:
    """The unescaped literal starting at `start` (a quote) and the index after it."""
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            escaped = text[i + 1]
            if escaped not in _ESCAPES:
                raise QueryError(f"unknown escape \\{escaped} (column {i + 1})")
            chars.append(_ESCAPES[escaped])
            i += 2
        elif ch == quote and text.startswith(quote * 2, i):
            chars.append(quote)  # SQL's doubled quote
            i += 2
        elif ch == quote:
            return "".join(chars), i + 1
        else:
            chars.append(ch)
            i += 1
    raise QueryError(f"unterminated string starting at column {start + 1}")


def quote_literal(value: str) -> str:
    """`value` as a single-quoted literal that Temporal reads back as exactly `value`."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Parser:
    """Recursive descent over the tokens, writing the clause back as it goes.

    query     := or_expr
    or_expr   := and_expr (OR and_expr)*
    and_expr  := not_expr (AND not_expr)*
    not_expr  := NOT not_expr | '(' or_expr ')' | predicate
    predicate := field op value
               | field [NOT] IN '(' value (',' value)* ')'
               | field [NOT] BETWEEN value AND value
               | field [NOT] STARTS_WITH string
               | field IS [NOT] NULL
    """

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.at = 0
        self.depth = 0

    def parse(self) -> str:
        if not self.tokens:
            raise QueryError("the query is empty")
        clause = self.or_expr()
        if self.at < len(self.tokens):
            token = self.tokens[self.at]
            if token.kind == ")":
                raise QueryError(f"unbalanced ')' at column {token.column}")
            raise QueryError(f"expected AND or OR at column {token.column}, not {token.value!r}")
        return clause

    # ── helpers ──

    def peek(self, kind: str, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        token = self.tokens[self.at]
        return token.kind == kind and (value is None or token.value == value)

    def take(self, kind: str, value: str | None = None, what: str | None = None) -> Token:
        if not self.peek(kind, value):
            raise self.expected(what or value or kind)
        self.at += 1
        return self.tokens[self.at - 1]

    def expected(self, wanted: str) -> QueryError:
        if self.at >= len(self.tokens):
            return QueryError(f"expected {wanted} at the end of the query")
        token = self.tokens[self.at]
        return QueryError(f"expected {wanted} at column {token.column}, not {token.value!r}")

    def keyword(self, word: str) -> bool:
        if self.peek("keyword", word):
            self.at += 1
            return True
        return False

    # ── grammar ──

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            parts.append(self.and_expr())
        return " OR ".join(parts)

    def and_expr(self) -> str:
        parts = [self.not_expr()]
        while self.keyword("AND"):
            parts.append(self.not_expr())
        return " AND ".join(parts)

    def not_expr(self) -> str:
        if self.keyword("NOT"):
            return f"NOT {self.nested(self.not_expr)}"
        if self.peek("("):
            opening = self.take("(")
            inner = self.nested(self.or_expr)
            if not self.peek(")"):
                raise QueryError(f"unbalanced '(' at column {opening.column}")
            self.take(")")
            return f"({inner})"
        return self.predicate()

    def nested(self, rule: Callable[[], str]) -> str:
        # A bound on nesting keeps a hostile text from exhausting the recursion limit.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QueryError(f"the query nests deeper than {MAX_DEPTH} levels")
        try:
            return rule()
        finally:
            self.depth -= 1

    def predicate(self) -> str:
        field = self.field()
        if self.peek("op"):
            return f"{field} {self.take('op').value} {self.value()}"
        if self.keyword("IS"):
            negated = "NOT " if self.keyword("NOT") else ""
            self.take("keyword", "NULL")
            return f"{field} IS {negated}NULL"
        negated = "NOT " if self.keyword("NOT") else ""
        if self.keyword("IN"):
            self.take("(", what="'('")
            values = [self.value()]
            while self.peek(","):
                self.take(",")
                values.append(self.value())
            self.take(")", what="')'")
            return f"{field} {negated}IN ({', '.join(values)})"
        if self.keyword("BETWEEN"):
            low = self.value()
            self.take("keyword", "AND")
            return f"{field} {negated}BETWEEN {low} AND {self.value()}"
        if self.keyword("STARTS_WITH"):
            prefix = self.take("string", what="a quoted string")
            return f"{field} {negated}STARTS_WITH {quote_literal(prefix.value)}"
        raise self.expected(
            "IN, BETWEEN or STARTS_WITH" if negated else "a comparison (=, !=, <, >, IN, …)"
        )

    def field(self) -> str:
        token = self.take("name", what="a field name")
        if token.value in QUERY_FIELDS:
            return token.value
        close = [name for name in QUERY_FIELDS if name.lower() == token.value.lower()]
        hint = f"did you mean {close[0]}? " if close else ""
        raise QueryError(
            f"{token.value!r} (column {token.column}) is not a field you can filter on; "
            f"{hint}fields: {', '.join(QUERY_FIELDS)}"
        )

    def value(self) -> str:
        if self.peek("string"):
            return quote_literal(self.take("string").value)
        return self.take("number", what="a quoted string or a number").value


def call_query_clause(text: str) -> str:
    """The user's visibility query, checked against the grammar and written back.

    Args:
        text: The query as the user wrote it (e.g. `CallPhase = 'due' AND CallAttempts >= 2`).

    Returns:
        The same filter as Temporal will read it: allowed fields only, keywords upper-cased,
        literals re-quoted. The caller wraps it in parentheses after its own clauses.

    Raises:
        QueryError: when the text is not in the grammar, names a field that is not allowed, is
            longer than `MAX_QUERY_LENGTH` or nests deeper than `MAX_DEPTH`.
    """
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(tokenize(text)).parse()
