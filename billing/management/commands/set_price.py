"""``manage.py set_price --model NAME --price 0.02 [--from YYYY-MM-DD] [--batch]``: a model's price per 1M
input tokens (``--batch``: its Batch API price, which otherwise is half its price).

Without ``--from``: the model's first price, in effect for all of its past usage (refused when
it already has one). With ``--from``: a new price from that UTC date on (past usage keeps its price).
"""
from datetime import date
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.models import Price, PriceTier
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
        parser.add_argument("--batch", action="store_true",
                            help="The price of the model's Batch API usage (default: half its price).")

    def handle(self, *args, model, price, effective_from, batch=False, **options):
        tier = PriceTier.BATCH if batch else PriceTier.DEFAULT
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
                if Price.objects.filter(model=embedding_model, service_tier=tier).exists():
                    raise CommandError(f"{model} already has a {'batch ' if batch else ''}price; give --from for a change.")
                row = price_initial_set(model=embedding_model, price_per_million_tokens=amount, service_tier=tier)
            else:
                row = price_create(model=embedding_model, price_per_million_tokens=amount, effective_from=day,
                                   service_tier=tier)
        except APIError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(row))
