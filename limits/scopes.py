"""Who a limit belongs to (`Scope`) and the limits stored for it (`ScopeLimits`): the values
admission checks and the selectors read, shared by both."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """Who a limit belongs to: ``kind`` ``organization`` / ``project`` / ``key``, primary key, public id."""

    kind: str
    pk: int
    public_id: str

    @property
    def slug(self) -> str:
        return {"organization": "org", "project": "proj", "key": "key"}[self.kind]


@dataclass(frozen=True)
class ScopeLimits:
    """The limits stored for one scope (``None`` = unlimited): tokens/month, requests/min, tokens/min."""

    monthly_tokens: int | None = None
    rpm: int | None = None
    tpm: int | None = None
