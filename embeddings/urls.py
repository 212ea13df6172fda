from django.urls import path

from . import views

urlpatterns = [
    path("embeddings", views.EmbeddingsView.as_view(), name="embeddings"),
    path("models", views.ModelListView.as_view(), name="models"),
    path("models/<path:model_id>", views.ModelDetailView.as_view(), name="model-detail"),
]
