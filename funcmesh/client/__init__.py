"""Typed HTTP client of the funcmesh API (used by the CLI and the tests)."""
