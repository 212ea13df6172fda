"""``manage.py set_price --model NAME --price 0.02 [--from YYYY-MM-DD]``: a model's price per 1M input tokens.

Without ``--from``: the model's first price, in effect for all of its past usage (refused when
it already has one). With ``--from``: a new price from that UTC date on (past usage keeps its price).
"""
from datetime import date
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.models import Price
from billing.services import price_create, price_initial_set
from config.errors import APIError
from embeddings.models import EmbeddingModel


class Command(BaseCommand):
    help = "Set a model's first price, or a new price from a UTC date on (past usage keeps its price)."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True)
        parser.add_argument("--price", required=True, help="Decimal, per 1,000,000 input tokens.")
        parser.add_argument("--from", dest="effective_from", default=None,
                            help="YYYY-MM-DD (UTC). Omit for a model's first price (covers its past).")

    def handle(self, *args, model, price, effective_from, **options):
        embedding_model = EmbeddingModel.objects.filter(name=model).first()
        if embedding_model is None:
            raise CommandError(f"No model {model!r}.")
        try:
            amount = Decimal(price)
            day = None if effective_from is None else date.fromisoformat(effective_from)
        except (InvalidOperation, ValueError):
            raise CommandError("--price must be a decimal and --from a YYYY-MM-DD date.") from None
        try:
            if day is None:
                if Price.objects.filter(model=embedding_model).exists():
                    raise CommandError(f"{model} already has a price; give --from for a change.")
                row = price_initial_set(model=embedding_model, price_per_million_tokens=amount)
            else:
                row = price_create(model=embedding_model, price_per_million_tokens=amount, effective_from=day)
        except APIError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(row))
