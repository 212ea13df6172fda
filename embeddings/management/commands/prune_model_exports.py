"""``manage.py prune_model_exports [--unused-days D]``: remove what ``EMBEDDINGS_EXPORT_DIR`` keeps for
model files or library versions no longer served.

Every model on CPU keeps its ONNX export, manifest and tokenizer there, named by `model_stamp` (a
digest of the model's files and of the versions of torch, transformers, sentence-transformers,
tokenizers and onnxruntime). A new model file or library version names new ones; the old ones
(~90 MB for all-MiniLM-L6-v2) are removed by this command once none of their files was written or
read by a load for ``--unused-days`` days (``EMBEDDINGS_EXPORT_KEEP_DAYS``, 7), whatever their
stamp, but those of the registered models as this installation names them, which stay. The release
step (``make migrate``, the first step of ``make serve``) runs it after registering the models.
"""
from django.conf import settings
from django.core.management.base import BaseCommand

from embeddings.models import EmbeddingModel
from embeddings.serving.tokenization import kept_prune, model_stamp


class Command(BaseCommand):
    help = ("Remove the ONNX exports, manifests and tokenizers kept in EMBEDDINGS_EXPORT_DIR for model files or "
            "library versions no registered model uses, once unused for --unused-days days.")

    def add_arguments(self, parser):
        parser.add_argument("--unused-days", dest="unused_days", type=float, default=None,
                            help="Days since a stamp's files were last written or read by a load "
                                 "(default: EMBEDDINGS_EXPORT_KEEP_DAYS).")

    def handle(self, *args, unused_days, **options):
        days = settings.EMBEDDINGS_EXPORT_KEEP_DAYS if unused_days is None else unused_days
        keep = {model_stamp(path) for path in EmbeddingModel.objects.values_list("local_path", flat=True).distinct()}
        pruned = kept_prune(settings.EMBEDDINGS_EXPORT_DIR, keep=keep, unused_for=days * 86400)
        if pruned.paths:
            self.stdout.write(f"Removed {len(pruned.paths)} kept files ({pruned.bytes / 1e6:.1f} MB) of "
                              f"{len(pruned.stamps)} model stamps unused for {days:g} days from "
                              f"{settings.EMBEDDINGS_EXPORT_DIR}: {', '.join(pruned.stamps) or 'temporary files'}")
