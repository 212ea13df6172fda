"""``/v1/organization/...``: the usage and costs API (admin keys)."""
from django.urls import path

from . import api

urlpatterns = [
    path("usage/embeddings", api.UsageEmbeddingsView.as_view(), name="organization-usage-embeddings"),
    path("costs", api.CostsView.as_view(), name="organization-costs"),
]
