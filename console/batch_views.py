"""The console's Batches page of a project: its batches (status, a progress bar, counts, times),
downloads of their output and error files, and cancel. Scoped by `console.base.OrganizationView`;
reads and writes go through `batches.services` and `batches.files` (the API's own code)."""
from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import redirect

from accounts import roles
from batches import files, services
from config.errors import APIError, NotFoundError

from .base import OrganizationView

# Batches shown per page (newest first).
BATCHES_PER_PAGE = 50


class BatchListView(OrganizationView):
    """``/console/orgs/<org>/projects/<project>/batches/``: the project's batches, newest first."""

    template_name = "console/batches.html"
    nav = "projects"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        project = self.project(self.kwargs["project"])
        rows, _ = services.batches_list(project_id=project.pk, limit=BATCHES_PER_PAGE)
        for batch in rows:
            done = batch.completed + batch.failed
            batch.progress = round(100 * done / batch.total) if batch.total else 0
            batch.can_cancel = batch.status in ("validating", "in_progress") and roles.can_create_keys(self.role)
        context.update(project=project, batches=rows)
        return context


def _found(lookup, **kwargs):
    """``lookup(**kwargs)`` (the API's own lookups, scoped by project); its `NotFoundError` (another
    project's object, or none) is the console's 404 page."""
    try:
        return lookup(**kwargs)
    except NotFoundError as exc:
        raise Http404(exc.message) from None


class BatchCancelView(OrganizationView):
    """``.../batches/<batch>/cancel/`` (POST; members and above): `batches.services.batch_cancel`;
    404 for a batch of another project or tenant; other methods 405."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        project = self.project(self.kwargs["project"])
        self.require(roles.can_create_keys(self.role))
        batch = _found(services.batch_get, project_id=project.pk, public_id=self.kwargs["batch"])
        try:
            services.batch_cancel(batch=batch)
            messages.success(request, f"Batch {batch.public_id} is being cancelled.")
        except APIError as exc:
            messages.error(request, exc.message)
        return redirect("console:batches", org=self.organization.public_id, project=project.public_id)


class BatchFileDownloadView(OrganizationView):
    """``.../files/<file>/content``: a file of the project (a batch's input, output or errors),
    streamed; 404 for a file of another project or tenant, or none."""

    http_method_names = ["get", "head"]

    def get(self, request, *args, **kwargs):
        project = self.project(self.kwargs["project"])
        file = _found(files.file_get, project_id=project.pk, public_id=self.kwargs["file"])
        return FileResponse(files.file_open(file), as_attachment=True, filename=file.filename,
                            content_type="application/jsonl")
