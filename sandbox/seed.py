"""Demo data the sandbox creates on first start.

The identifiers are fixed so that tests, examples and the README can name them. They are valid
version-4 UUIDs (TapRaise accepts nothing else), derived from a label so they never change.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import get_args

from sandbox.validation import Action


def fixed_uuid(label: str) -> str:
    """Return a stable version-4 UUID derived from ``label``."""
    digest = hashlib.sha256(f"tapraise-sandbox:{label}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


DEMO_ACCOUNT_EMAIL = "demo-service-account@sandbox.tapraise.local"
"""The service account whose key the sandbox writes to ``service-account.json``."""

DEMO_ORGANIZATION_UUID = fixed_uuid("organization:demo")
"""The demo organization (maxCallAttempts 5)."""

SECOND_ORGANIZATION_UUID = fixed_uuid("organization:second")
"""A second organization the demo account also represents (maxCallAttempts 3)."""

FOREIGN_ORGANIZATION_UUID = fixed_uuid("organization:foreign")
"""An organization the demo account does not represent."""

_FIRST_NAMES = (
    "Anna", "Bram", "Carmen", "Daan", "Eva", "Finn", "Gijs", "Hanna", "Iris", "Joris",
    "Kim", "Lars", "Mila", "Noah", "Olivia", "Pieter", "Quinten", "Roos", "Sem", "Tess",
    "Umut", "Vera",
)  # fmt: skip
_LAST_NAMES = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot",
    "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker", "Brouwer", "de Wit", "Dijkstra",
    "Smits", "de Graaf", "van der Meer", "Kok",
)  # fmt: skip

DEMO_PERSON_UUIDS: tuple[str, ...] = tuple(
    fixed_uuid(f"person:demo:{i}") for i in range(len(_FIRST_NAMES))
)
"""Persons owned by the demo organization."""

SECOND_ORG_PERSON_UUIDS: tuple[str, ...] = tuple(fixed_uuid(f"person:second:{i}") for i in range(4))
"""Persons owned by the second organization."""

FOREIGN_PERSON_UUID = fixed_uuid("person:foreign:0")
"""A person of the foreign organization: out of the demo account's scope."""

ORGANIZATIONS: tuple[tuple[str, str, int], ...] = (
    (DEMO_ORGANIZATION_UUID, "Demo Foundation", 5),
    (SECOND_ORGANIZATION_UUID, "Second Charity", 3),
    (FOREIGN_ORGANIZATION_UUID, "Foreign Fund", 4),
)
"""(uuid, name, maxCallAttempts) of every seeded organization."""


PERSONS: tuple[tuple[str, str, str, str, str], ...] = (
    *(
        (person, _FIRST_NAMES[i], _LAST_NAMES[i], f"+3161000{i:04d}", DEMO_ORGANIZATION_UUID)
        for i, person in enumerate(DEMO_PERSON_UUIDS)
    ),
    *(
        (person, _FIRST_NAMES[-1 - i], _LAST_NAMES[i], f"+3220000{i:04d}", SECOND_ORGANIZATION_UUID)
        for i, person in enumerate(SECOND_ORG_PERSON_UUIDS)
    ),
    (FOREIGN_PERSON_UUID, "Fremde", "Person", "+4915100000000", FOREIGN_ORGANIZATION_UUID),
)
"""(uuid, firstName, lastName, phoneNumber, owningOrganizationUuid) of every seeded person."""

ALL_ACTIONS: tuple[str, ...] = get_args(Action)
"""Every action a service account can be allowed to take."""

DEMO_ACCOUNT_ORGANIZATIONS: tuple[str, ...] = (DEMO_ORGANIZATION_UUID, SECOND_ORGANIZATION_UUID)
"""The organizations the demo service account represents."""
