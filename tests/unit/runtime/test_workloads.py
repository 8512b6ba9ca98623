from __future__ import annotations

import re

import pytest

from funcmesh.model.deployments import HASH_ALPHABET
from funcmesh.runtime.replicas import backoff_delay_s
from funcmesh.runtime.workloads import pod_name


@pytest.mark.parametrize(
    ("failures", "delay_s"),
    [(1, 0.0), (2, 10.0), (3, 20.0), (4, 40.0), (6, 160.0), (7, 300.0), (20, 300.0)],
)
def test_restarts_back_off_like_the_kubelet(failures: int, delay_s: float) -> None:
    """The first restart at once, then 10 s doubling up to five minutes."""
    assert backoff_delay_s(failures, 10.0) == delay_s


def test_the_backoff_scales_with_its_base() -> None:
    assert [backoff_delay_s(n, 0.1) for n in (1, 2, 3, 30)] == pytest.approx([0, 0.1, 0.2, 3.0])


def test_pod_names_carry_the_deployment_and_template_hash() -> None:
    names = {pod_name("web", "m99tbblfd9") for _ in range(50)}
    alphabet = re.escape(HASH_ALPHABET)
    assert all(re.fullmatch(rf"web-m99tbblfd9-[{alphabet}]{{5}}", name) for name in names)
    assert len(names) > 45  # random suffixes
