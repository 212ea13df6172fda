"""The micro-batcher (`embeddings.serving.batching.MicroBatcher`) on the real engine: coalescing,
default-tier precedence over flex, failure isolation, results in order."""
from __future__ import annotations

import numpy as np
import pytest

from embeddings import services
from embeddings.serving.batching import MicroBatcher


@pytest.fixture
def engine(default_model):
    return services.engine_for(default_model)


@pytest.fixture
def tokenize(default_model):
    return services.tokenizer_for(default_model).tokenize


def test_everything_waiting_is_taken_into_one_batch_in_order(engine, tokenize, reference_encode):
    batcher = MicroBatcher(engine, max_batch_tokens=65536, max_wait_ms=0)
    batcher.pause()  # the model is "busy": submissions pile up
    texts = [[f"request {i} text {j}" for j in range(1 + i % 3)] for i in range(10)]
    futures = [batcher.submit(tokenize(t)) for t in texts]
    batcher.resume()
    results = [f.result(timeout=60) for f in futures]
    assert [(r.items, r.inputs) for r in batcher.history] == [(10, sum(map(len, texts)))]
    for t, vectors in zip(texts, results):
        np.testing.assert_allclose(vectors, reference_encode(t), atol=1e-5, rtol=0)


def test_default_tier_goes_ahead_of_flex_waiting_in_the_batcher(engine, tokenize):
    """Flex items queued first still wait while default items fill the token budget."""
    batcher = MicroBatcher(engine, max_batch_tokens=40, max_wait_ms=0)
    batcher.pause()
    flex = [batcher.submit(tokenize([f"flex {i}"]), tier="flex") for i in range(4)]  # 4 tokens each
    default = [batcher.submit(tokenize([f"default {i}"]), tier="default") for i in range(12)]  # 4 tokens each
    batcher.resume()
    for future in flex + default:
        future.result(timeout=60)
    history = list(batcher.history)
    # 10 default items fill the first batch; flex gets only what is left after every default item.
    assert (history[0].default, history[0].flex) == (10, 0)
    assert (history[1].default, history[1].flex) == (2, 4)


def test_flex_fills_room_default_work_does_not_need(engine, tokenize):
    batcher = MicroBatcher(engine, max_batch_tokens=40, max_wait_ms=0)
    batcher.pause()
    flex = [batcher.submit(tokenize([f"flex {i}"]), tier="flex") for i in range(8)]
    default = [batcher.submit(tokenize([f"default {i}"]), tier="default") for i in range(3)]
    batcher.resume()
    for future in flex + default:
        future.result(timeout=60)
    assert [(r.default, r.flex) for r in batcher.history] == [(3, 7), (0, 1)]


def test_a_failing_submission_fails_alone(engine, tokenize, reference_encode):
    batcher = MicroBatcher(engine, max_wait_ms=0)
    batcher.pause()
    good = batcher.submit(tokenize(["fine text"]))
    bad = batcher.submit([[101, 10**7, 102]])  # an id outside the vocabulary: the embedding lookup raises
    batcher.resume()
    np.testing.assert_allclose(good.result(timeout=60), reference_encode(["fine text"]), atol=1e-5, rtol=0)
    with pytest.raises(IndexError):
        bad.result(timeout=60)


def test_unknown_tier_is_refused(engine):
    with pytest.raises(ValueError):
        MicroBatcher(engine).submit([[101, 102]], tier="premium")


def test_an_idle_batcher_runs_a_lone_encode_in_the_callers_thread(engine, tokenize, reference_encode):
    """`encode` on an idle batcher with nothing waiting runs the batch in the caller's thread
    (recorded like any batch); what is submitted meanwhile waits for it and is the thread's next
    batch; a paused batcher or a waiting queue sends `encode` through the queue."""
    import threading

    batcher = MicroBatcher(engine, max_wait_ms=0)
    threads = []
    original = engine.encode

    def encode_and_note(rows, on_pass=None, wide=False):
        threads.append(threading.current_thread())
        if len(threads) == 1:  # while the caller runs its own batch, another request arrives
            queued.append(batcher.submit(tokenize(["submitted meanwhile"])))
        return original(rows, on_pass=on_pass)

    queued = []
    engine.encode = encode_and_note
    try:
        vectors = batcher.encode(tokenize(["a lone request"]))
        later = queued[0].result(timeout=60)
    finally:
        del engine.encode
    np.testing.assert_allclose(vectors, reference_encode(["a lone request"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(later, reference_encode(["submitted meanwhile"]), atol=1e-5, rtol=0)
    assert threads[0] is threading.current_thread() and threads[1] is batcher._thread
    assert [(r.items, r.inputs) for r in batcher.history] == [(1, 1), (1, 1)]

    batcher.pause()
    result = {}
    caller = threading.Thread(target=lambda: result.update(v=batcher.encode(tokenize(["while paused"]))))
    caller.start()
    caller.join(0.5)
    assert caller.is_alive() and not result  # queued, not run by the caller
    batcher.resume()
    caller.join(60)
    np.testing.assert_allclose(result["v"], reference_encode(["while paused"]), atol=1e-5, rtol=0)


def test_a_malformed_encode_leaves_the_batcher_working(engine, tokenize, reference_encode):
    """Input that is not a list of token-id lists raises in the caller and leaves the engine free:
    the next `encode` and `submit` run."""
    batcher = MicroBatcher(engine, max_wait_ms=0)
    with pytest.raises(TypeError):
        batcher.encode([1, 2, 3])
    np.testing.assert_allclose(batcher.encode(tokenize(["after"])), reference_encode(["after"]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(batcher.submit(tokenize(["queued"])).result(timeout=60), reference_encode(["queued"]),
                               atol=1e-5, rtol=0)


def test_a_batcher_that_waits_for_others_runs_encode_on_its_thread(engine, tokenize):
    """With ``max_wait_ms`` set, an idle batcher waits for others to join: `encode` goes through the
    queue and the batcher's thread."""
    import threading

    batcher = MicroBatcher(engine, max_wait_ms=5)
    seen = []
    original = engine.encode
    engine.encode = lambda rows, on_pass=None, wide=False: (seen.append(threading.current_thread()), original(rows))[1]
    try:
        batcher.encode(tokenize(["one"]))
    finally:
        del engine.encode
    assert seen == [batcher._thread]
