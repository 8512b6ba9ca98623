"""Kubernetes name rules: DNS-1123 labels and subdomains, and label keys and values."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def dns1123_label_error(name: str) -> str | None:
    """Why ``name`` is not a DNS-1123 label, or None when it is one."""
    if len(name) > 63:
        return f'"{name}" must be no more than 63 characters'
    if not _LABEL.match(name):
        return (
            f'"{name}" is not a valid name: a DNS-1123 label must consist of lower case '
            "alphanumeric characters or '-', and must start and end with an alphanumeric "
            "character (e.g. 'my-name', or '123-abc')"
        )
    return None


def dns1123_subdomain_error(name: str) -> str | None:
    """Why ``name`` is not a DNS-1123 subdomain, or None when it is one."""
    if len(name) > 253:
        return f'"{name}" must be no more than 253 characters'
    if not _SUBDOMAIN.match(name):
        return (
            f'"{name}" is not a valid name: a DNS-1123 subdomain must consist of lower case '
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            "character"
        )
    return None


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label or annotation key, or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and dns1123_subdomain_error(prefix):
        return f'label key "{key}": prefix must be a DNS-1123 subdomain'
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            f'label key "{key}": name part must be 63 characters or less, beginning and ending '
            "with an alphanumeric character, with '-', '_', '.' and alphanumerics between"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (
            f'label value "{value}" must be 63 characters or less, empty or beginning and '
            "ending with an alphanumeric character, with '-', '_', '.' and alphanumerics between"
        )
    return None
