"""The serving core, framework-free (no Django; an import-linter contract keeps it so): the
engine (`engine.Engine`: a sentence-transformers model on CPU or CUDA fp16), the micro-batcher
(`batching.MicroBatcher`) and tokenization (`tokenization`: the served model's tokenizer and
OpenAI's ``cl100k_base`` for token-id inputs). Workers, the API process, benchmarks and tests
use it alike.

Models load only from local paths: this is the one place the Hugging Face hub is switched off.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
