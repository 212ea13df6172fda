"""Who a limit belongs to (`Scope`) and the limits stored for it (`ScopeLimits`): the values
admission checks and the selectors read, shared by both."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """Who a limit belongs to: ``kind`` ``organization`` / ``project`` / ``key``, primary key, public id;
    or ``model``: a project's (its pk and public id) requests to the model ``model``."""

    kind: str
    pk: int
    public_id: str
    model: str = ""

    @property
    def slug(self) -> str:
        return {"organization": "org", "project": "proj", "key": "key", "model": "projmodel"}[self.kind]

    @property
    def label(self) -> str:
        """How a message names it: ``project proj_...``, or ``project proj_... for model M``."""
        if self.kind == "model":
            return f"project {self.public_id} for model {self.model}"
        return f"{self.kind} {self.public_id}"


@dataclass(frozen=True)
class ScopeLimits:
    """The limits stored for one scope (``None`` = unlimited): tokens/month, requests/min, tokens/min."""

    monthly_tokens: int | None = None
    rpm: int | None = None
    tpm: int | None = None
