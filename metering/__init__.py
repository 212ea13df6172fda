"""Metering: `models.UsageRecord`, one row per successful request, and its writer
(`services.usage_record_create`). The table every floor above reads: admission rebuilds
quota counters from it, billing rolls it up and prices it."""
