"""Invalid requests that used to cost seconds of CPU each (issue 11, item 2).

A 4 MB input was tokenized to its end before its 400 ``context_length_exceeded`` (~10 s of CPU),
and a key at its RPM limit could keep sending them. Now an input over the model's limit is
found from a window of its first characters (`ModelTokenizer.tokenize_within`), every
refusal after authentication counts toward the key's RPM, so the key gets 429s, and a process
that has seen a key's RPM bucket full answers its next requests 429 before tokenizing them.
"""
from __future__ import annotations

import pytest

from embeddings.serving.tokenization import get_tokenizer
from limits.services import limit_set
from metering.models import UsageRecord
from tests.conftest import assert_error, post_embeddings

MODEL = "all-MiniLM-L6-v2"
FOUR_MB = ("The food was delicious and the waiter was friendly. " * 80_000)[:4_000_000]


@pytest.fixture
def tokenized_lengths(monkeypatch, default_model):
    """Record the length (characters) of every text handed to the model's tokenizer."""
    lengths: list[int] = []
    model_tokenizer = get_tokenizer(default_model.local_path)

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def encode_batch(self, texts, **kwargs):
            lengths.extend(len(t) for t in texts)
            return self.inner.encode_batch(texts, **kwargs)

        def encode(self, text, **kwargs):
            lengths.append(len(text))
            return self.inner.encode(text, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(model_tokenizer, "tokenizer", Spy(model_tokenizer.tokenizer))
    return lengths


def test_a_4mb_input_is_refused_without_tokenizing_it(client, tokenized_lengths):
    response = post_embeddings(client, {"model": MODEL, "input": FOUR_MB})
    error = assert_error(response, 400, param="input", code="context_length_exceeded")
    assert error["message"].startswith("This model's maximum context length is 256 tokens, however you "
                                       "requested at least ")
    assert error["message"].endswith("(input[0])")
    assert tokenized_lengths and max(tokenized_lengths) <= 16 * 256  # a window, not 4,000,000 chars


def test_the_first_input_over_the_limit_is_named_and_later_inputs_are_not_tokenized(client, tokenized_lengths):
    inputs = ["short and fine"] * 3 + [FOUR_MB[:200_000]] + [FOUR_MB[:100_000]] * 50
    response = post_embeddings(client, {"model": MODEL, "input": inputs})
    error = assert_error(response, 400, param="input", code="context_length_exceeded")
    assert error["message"].endswith("(input[3])")
    assert sum(tokenized_lengths) < 200_000  # not the 5 MB the request carries


def test_a_long_valid_input_is_not_refused(client):
    # 100,000 characters but 3 tokens: one WordPiece word over 100 characters is a single [UNK].
    # A bound on characters alone would refuse it; the exact path accepts it.
    response = post_embeddings(client, {"model": MODEL, "input": "a" * 100_000})
    assert response.status_code == 200, response.content
    assert response.json()["usage"]["total_tokens"] == 3


def test_just_over_the_limit_still_reports_the_exact_count(client):
    response = post_embeddings(client, {"model": MODEL, "input": "word " * 300})
    error = assert_error(response, 400, param="input", code="context_length_exceeded")
    assert "however you requested 302 tokens (302 in your prompt" in error["message"]


def test_a_key_at_its_rpm_limit_sending_invalid_inputs_gets_429(client, created_key, project):
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=3)
    answers = [post_embeddings(client, {"model": MODEL, "input": FOUR_MB[:50_000]}) for _ in range(5)]
    assert [a.status_code for a in answers] == [400, 400, 400, 429, 429]
    error = assert_error(answers[-1], 429, param=None, code="rate_limit_exceeded", type="requests")
    assert "requests per min (RPM)" in error["message"]
    assert int(answers[-1]["Retry-After"]) >= 1
    assert answers[2]["x-ratelimit-remaining-requests"] == "0"
    # The limit holds for valid requests too: the invalid ones used it up.
    assert post_embeddings(client, {"model": MODEL, "input": "hello"}).status_code == 429
    assert UsageRecord.objects.count() == 0


def test_a_key_known_to_be_at_its_rpm_limit_gets_429_before_tokenizing(client, created_key, project,
                                                                       tokenized_lengths):
    limit_set(organization=project.organization, api_key=created_key.api_key, rpm=2)
    assert [post_embeddings(client, {"model": MODEL, "input": "hello"}).status_code for _ in range(2)] == [200, 200]
    # Valid but costly to tokenize (100,000 characters, one [UNK] word): the first 429 is found
    # by admission, after tokenization; from then on this process knows the bucket is full.
    long_valid = {"model": MODEL, "input": "a" * 100_000}
    assert post_embeddings(client, long_valid).status_code == 429
    tokenized_lengths.clear()
    again = post_embeddings(client, long_valid)
    assert_error(again, 429, param=None, code="rate_limit_exceeded", type="requests")
    assert int(again["Retry-After"]) >= 1 and again["x-ratelimit-remaining-requests"] == "0"
    assert tokenized_lengths == []  # refused before the tokenizer
