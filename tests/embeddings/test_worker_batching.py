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
