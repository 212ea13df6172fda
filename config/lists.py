"""OpenAI's list object, for every paginated list the API returns (Admin API, files, batches)."""
from __future__ import annotations


def list_object(data: list[dict], has_more: bool) -> dict:
    """OpenAI's list: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``; ``data``
    is the page's objects, each with an ``id``, in listing order."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
