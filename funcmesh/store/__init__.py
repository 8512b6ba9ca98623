"""Durable desired state: objects in SQLite, compare-and-set on resourceVersion, a change feed."""
