"""``manage.py set_price --model NAME --price 0.02 --from YYYY-MM-DD``: a model's new price per 1M input tokens."""
from datetime import date
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.services import price_create
from config.errors import APIError
from embeddings.models import EmbeddingModel


class Command(BaseCommand):
    help = "Set a model's price per 1M input tokens from a UTC date on (past usage keeps its price)."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True)
        parser.add_argument("--price", required=True, help="Decimal, per 1,000,000 input tokens.")
        parser.add_argument("--from", dest="effective_from", required=True, help="YYYY-MM-DD (UTC).")

    def handle(self, *args, model, price, effective_from, **options):
        embedding_model = EmbeddingModel.objects.filter(name=model).first()
        if embedding_model is None:
            raise CommandError(f"No model {model!r}.")
        try:
            amount, day = Decimal(price), date.fromisoformat(effective_from)
        except (InvalidOperation, ValueError):
            raise CommandError("--price must be a decimal and --from a YYYY-MM-DD date.") from None
        try:
            row = price_create(model=embedding_model, price_per_million_tokens=amount, effective_from=day)
        except APIError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(row))
