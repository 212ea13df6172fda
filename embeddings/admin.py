from django.contrib import admin

from .models import EmbeddingModel


@admin.register(EmbeddingModel)
class EmbeddingModelAdmin(admin.ModelAdmin):
    list_display = ("name", "variant_of", "prompt_name", "dimensions", "max_input_tokens", "supports_dimensions", "truncate",
                    "is_active")
    list_filter = ("is_active",)
    search_fields = ("name",)
