"""How vectors travel between a worker and the API: little-endian float32 bytes, base64-encoded
inside the JSON task result (never JSON float lists)."""
from __future__ import annotations

import base64

import numpy as np


def pack_vectors(vectors: np.ndarray) -> dict:
    """``(n, d)`` float32 -> ``{"shape": [n, d], "b64": <base64 of little-endian float32 bytes>}``."""
    data = np.ascontiguousarray(vectors, dtype="<f4")
    return {"shape": list(data.shape), "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def unpack_vectors(packed: dict) -> np.ndarray:
    """Inverse of `pack_vectors`: a writable ``(n, d)`` float32 array."""
    data = np.frombuffer(base64.b64decode(packed["b64"]), dtype="<f4")
    return data.reshape(packed["shape"]).astype(np.float32)
