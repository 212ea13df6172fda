"""Hostile input and fault probes (issue 11): each fails without its fix."""
