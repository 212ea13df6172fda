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

    Query and document embeddings: ``prompts`` names texts put before every input
    (sentence-transformers' ``prompts``: read from the model's own
    ``config_sentence_transformers.json`` at registration, or set with ``register_models --prompt``);
    ``prompt_name`` is the one this entry applies (``""``: none). An entry with ``variant_of`` is a
    prompt variant of that entry (Yandex's ``text-search-doc``/``text-search-query``): the same model,
    engine and settings (copied from it, refreshed when it is registered again), its prompt taken from
    ``variant_of.prompts``. Prompt tokens are tokens the model processes: counted, limited and billed.
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
    prompts = models.JSONField(default=dict, blank=True,
                               help_text="Named prompts, {name: text put before each input}.")
    variant_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="variants",
                                   help_text="The entry whose model and prompts this prompt variant shares.")
    prompt_name = models.CharField(max_length=100, blank=True, default="",
                                   help_text="The named prompt this entry puts before every input (empty: none).")
    is_active = models.BooleanField(default=True)
    owned_by = models.CharField(max_length=100, default="system")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(variant_of=models.F("pk")), name="embeddingmodel_variant_not_self"),
            models.CheckConstraint(condition=models.Q(variant_of__isnull=True) | ~models.Q(prompt_name=""),
                                   name="embeddingmodel_variant_has_prompt"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def names(self) -> list[str]:
        """The canonical name followed by the aliases."""
        return [self.name, *[a for a in self.aliases if a != self.name]]

    @property
    def prompt(self) -> str:
        """The text put before every input: ``prompt_name``'s prompt in this entry's ``prompts``, or for a
        variant in ``variant_of.prompts`` (load ``variant_of`` with the row: `select_related`); ``""``
        when none applies."""
        if not self.prompt_name:
            return ""
        source = self.variant_of if self.variant_of_id is not None else self
        return source.prompts.get(self.prompt_name, "")
