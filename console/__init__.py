"""The tenant console: every server-rendered page for tenants (projects, keys, members, admin
keys, usage, billing), all scoped through one base view (`base.OrganizationView`)."""
