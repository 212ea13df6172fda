"""Metering: `models.UsageRecord`, one row per successful request, and its writers
(`services.usage_record_create`; `services.usage_record_written_alongside` for a lone request,
whose row exists while it encodes and is deleted if the encode fails). The table every floor above reads: admission rebuilds
quota counters from it, billing rolls it up and prices it."""
