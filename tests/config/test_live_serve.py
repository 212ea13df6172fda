"""The session's shared ``make serve`` (tests/live.py) answers the official client; on a new
``VAR_DIR`` its release step made the model's ONNX export, once, before web and worker started,
and they load from it without torch (none of their processes maps libtorch); the files an earlier
version kept, unused for a week and more, it removed."""
from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.live import LEFTOVER_STAMP

pytestmark = pytest.mark.runtime


def test_the_shared_make_serve_embeds_through_the_official_client(live_serve):
    key = live_serve.key()
    with openai.OpenAI(base_url=f"{live_serve.base}/v1", api_key=key, max_retries=0) as client:
        result = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    records = live_serve.platform.log_records()  # JSON lines, each naming its process (config.logs)
    exports = [r for r in records if "Exported " in r["message"] and " to ONNX " in r["message"]]
    assert len(exports) == 1 and exports[0].get("process") == "migrate", exports
    loads = [r["message"] for r in records if "Loaded model" in r["message"] and r.get("process") in ("web", "worker")]
    assert loads and all("(onnx, fp32)" in line for line in loads), loads  # ONNX Runtime on CPU
    assert all("without torch" in line for line in loads), loads  # from the kept export, manifest, tokenizer
    models = Path(live_serve.env["VAR_DIR"]) / "models"
    assert len(list(models.glob("*.onnx"))) == 1
    # An earlier version's files, unused for 8 days, were removed by the release step; this one's stay.
    assert not list(models.glob(f"{LEFTOVER_STAMP}*"))
    pruned = [r["message"] for r in records if r.get("process") == "migrate" and r["message"].startswith("Removed ")]
    assert pruned == [f"Removed 4 kept files (0.0 MB) of 1 model stamps unused for 7 days from {models}: "
                      f"{LEFTOVER_STAMP}"], pruned
    served = live_serve.platform.children_named("granian") + live_serve.platform.children_named("celery", "worker")
    assert len(served) >= 3  # granian's main process and its two, the worker
    for proc in served:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "sentence_transformers" not in maps, proc.cmdline()
