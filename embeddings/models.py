"""The model registry."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class EmbeddingModel(models.Model):
    """A served embedding model, loaded offline from ``local_path``.

    ``name`` and each of ``aliases`` are accepted as the request's ``model``.
    ``max_input_tokens`` counts the tokens the model processes, special tokens
    included (all-MiniLM-L6-v2: 256). ``supports_dimensions`` marks a
    Matryoshka-trained model, for which the ``dimensions`` parameter truncates
    and re-normalizes. With ``truncate`` set, inputs longer than
    ``max_input_tokens`` are cut (and counted as cut) instead of rejected.
    ``token_ids`` says what an ``input`` of token ids is: ids of OpenAI's ``cl100k_base``
    (``openai``, the default: OpenAI's API defines token inputs so, and clients such as
    LangChain's send them), decoded to text; or ids of the served model's own tokenizer
    (``served``).
    """

    class TokenIds(models.TextChoices):
        OPENAI = "openai", "OpenAI's cl100k_base ids, decoded to text"
        SERVED = "served", "ids of the served model's own tokenizer"

    name = models.CharField(max_length=200, unique=True)
    aliases = models.JSONField(default=list, blank=True, help_text="Other names accepted as `model`.")
    local_path = models.CharField(max_length=1000, help_text="Directory of a sentence-transformers model.")
    dimensions = models.PositiveIntegerField()
    max_input_tokens = models.PositiveIntegerField()
    supports_dimensions = models.BooleanField(default=False, help_text="Matryoshka-trained: accepts `dimensions`.")
    truncate = models.BooleanField(default=False, help_text="Cut over-long inputs instead of rejecting them.")
    token_ids = models.CharField(max_length=10, choices=TokenIds.choices, default=TokenIds.OPENAI,
                                 help_text="What an `input` of token ids means.")
    is_active = models.BooleanField(default=True)
    owned_by = models.CharField(max_length=100, default="system")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def names(self) -> list[str]:
        """The canonical name followed by the aliases."""
        return [self.name, *[a for a in self.aliases if a != self.name]]
