"""Prometheus series of the serving core: the micro-batcher's batches and the engine's forward passes
(prometheus_client only, no Django: the rest of the platform's series and ``/metrics`` are in
`config.metrics`). Labelled by the model's registry name (the batcher's ``name``); in multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``) every process of a host adds to the same series.

* ``embeddings_batch_inputs``, ``embeddings_batch_padded_tokens``: histograms of each batch's rows
  and padded tokens (rows x longest row, summed over its forward passes);
* ``embeddings_batch_padding_efficiency``: real / padded tokens of each batch (1.0 = no padding);
* ``embeddings_batch_queue_wait_seconds``: per submission, from `MicroBatcher.submit` to the start of
  the batch that ran it;
* ``embeddings_batch_seconds_total``: seconds the engine spent running micro-batches (its forward
  passes plus sorting, planning and scattering rows): its rate is the engine's saturation, 1.0 per
  batcher when it never waits for work;
* ``embeddings_engine_forward_passes_total``, ``embeddings_engine_tokens_total`` (real),
  ``embeddings_engine_padded_tokens_total``, ``embeddings_engine_forward_seconds_total``;
  ``embeddings_engine_tokens_per_second``: real tokens per second of the latest batch;
* ``embeddings_engine_load_seconds{model,device,backend}``: how long loading the model took.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_INPUTS = Histogram("embeddings_batch_inputs", "Inputs (rows) per micro-batch.", ["model"],
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
BATCH_PADDED_TOKENS = Histogram("embeddings_batch_padded_tokens", "Padded tokens (rows x longest row, over "
                                "its forward passes) per micro-batch.", ["model"],
                                buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072))
BATCH_PADDING_EFFICIENCY = Histogram("embeddings_batch_padding_efficiency", "Real tokens / padded tokens per "
                                     "micro-batch (1.0: no padding).", ["model"],
                                     buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0))
BATCH_QUEUE_WAIT = Histogram("embeddings_batch_queue_wait_seconds", "Seconds from a submission to the start of "
                             "the micro-batch that ran it.", ["model"],
                             buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                      5.0, 10.0, 30.0))
BATCH_SECONDS = Counter("embeddings_batch_seconds_total", "Seconds spent running micro-batches (forward passes "
                        "and the work around them); rate 1.0 per batcher = never idle.", ["model"])
FORWARD_PASSES = Counter("embeddings_engine_forward_passes_total", "Forward passes run.", ["model"])
ENGINE_TOKENS = Counter("embeddings_engine_tokens_total", "Real (unpadded) tokens run through the model.",
                        ["model"])
ENGINE_PADDED_TOKENS = Counter("embeddings_engine_padded_tokens_total", "Padded tokens run through the model.",
                               ["model"])
FORWARD_SECONDS = Counter("embeddings_engine_forward_seconds_total", "Seconds spent in forward passes.", ["model"])
TOKENS_PER_SECOND = Gauge("embeddings_engine_tokens_per_second", "Real tokens per second of the latest batch.",
                          ["model"], multiprocess_mode="mostrecent")
LOAD_SECONDS = Gauge("embeddings_engine_load_seconds", "Seconds loading the model took (weights, warm-up "
                     "excluded).", ["model", "device", "backend"], multiprocess_mode="livemax")
