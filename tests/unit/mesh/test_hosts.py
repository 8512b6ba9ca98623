"""Istio host names: short names qualified by the rule's namespace, wildcards, Host headers."""

from __future__ import annotations

import pytest

from funcmesh.mesh.hosts import authority_host, host_matches, qualify, service_host, service_of


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("reviews", "shop", "reviews.shop.svc.cluster.local"),
        ("Reviews", "shop", "reviews.shop.svc.cluster.local"),
        ("reviews.other", "shop", "reviews.other"),  # dotted: as written, as Istio
        ("example.com", "shop", "example.com"),
        ("reviews.other.svc", "shop", "reviews.other.svc.cluster.local"),
        ("reviews.other.svc.cluster.local", "shop", "reviews.other.svc.cluster.local"),
        ("reviews.other.svc.cluster.local.", "shop", "reviews.other.svc.cluster.local"),
        ("shop.example.com", "shop", "shop.example.com"),
        ("Shop.Example.COM", "shop", "shop.example.com"),
        ("shop.example.com.", "shop", "shop.example.com"),
        ("example.com.", "shop", "example.com"),
        ("*.example.com", "shop", "*.example.com"),
        ("*", "shop", "*"),
        ("*.svc.cluster.local", "shop", "*.svc.cluster.local"),
    ],
)
def test_qualify(host: str, namespace: str, expected: str) -> None:
    assert qualify(host, namespace) == expected


@pytest.mark.parametrize(
    ("fqdn", "expected"),
    [
        ("reviews.shop.svc.cluster.local", ("shop", "reviews")),
        ("a.b.c.svc.cluster.local", None),  # a pod-style name, not a Service
        ("shop.svc.cluster.local", None),
        ("shop.example.com", None),
        ("*.shop.svc.cluster.local", None),
        ("svc.cluster.local", None),
    ],
)
def test_service_of(fqdn: str, expected: tuple[str, str] | None) -> None:
    assert service_of(fqdn) == expected


def test_service_host_is_the_inverse_of_service_of() -> None:
    assert service_host("shop", "reviews") == "reviews.shop.svc.cluster.local"
    assert service_of(service_host("shop", "reviews")) == ("shop", "reviews")


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("shop.example.com", "shop.example.com", True),
        ("shop.example.com", "shop.example.org", False),
        ("*", "anything.at.all", True),
        ("*.example.com", "shop.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "shopexample.com", False),
        ("*.example.com", "shop.example.com.evil", False),
    ],
)
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"shop.example.com", "shop.example.com"),
        (b"Shop.Example.com:8080", "shop.example.com"),
        (b"shop.example.com.:80", "shop.example.com"),
        (b" shop.example.com ", "shop.example.com"),
        (b"[::1]:80", "::1"),
        (b"[::1]", "::1"),
        (b"::1", "::1"),
        (b"127.0.0.1:8080", "127.0.0.1"),
    ],
)
def test_authority_host(value: bytes, expected: str) -> None:
    assert authority_host(value) == expected
