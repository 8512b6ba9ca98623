from __future__ import annotations

import pytest

from funcmesh.model.deployments import Strategy
from funcmesh.runtime.rollout import Plan, PodState, plan

ROLLING = Strategy()  # 25% surge (rounds up), 25% unavailable (rounds down)
RECREATE = Strategy(type="Recreate", max_surge=0, max_unavailable="100%")


def pods(spec: str) -> list[PodState]:
    """``"N+ o+ n-"``: N/n a new pod (current template), O/o an old one; + ready, - not.
    Later pods are newer."""
    return [
        PodState(
            name=f"{word[0]}{index}", current=word[0] in "nN", ready=word[1] == "+", created=index
        )
        for index, word in enumerate(spec.split())
    ]


@pytest.mark.parametrize(
    ("spec", "replicas", "expected"),
    [
        ("", 3, Plan(start=3)),
        ("n+ n+ n+", 3, Plan()),
        ("n+ n+ n+", 1, Plan(stop=("n2", "n1"))),  # newest first
        ("n+ n- n+", 1, Plan(stop=("n1", "n2"))),  # not ready first
        ("n+", 0, Plan(stop=("n0",))),
        ("n+ n+", 4, Plan(start=2)),
    ],
)
def test_scaling(spec: str, replicas: int, expected: Plan) -> None:
    assert plan(pods(spec), replicas=replicas, strategy=ROLLING) == expected


def test_a_rolling_update_of_one_replica_starts_the_new_pod_before_stopping_the_old() -> None:
    assert plan(pods("o+"), replicas=1, strategy=ROLLING) == Plan(start=1)
    assert plan(pods("o+ n-"), replicas=1, strategy=ROLLING) == Plan()  # waits for readiness
    assert plan(pods("o+ n+"), replicas=1, strategy=ROLLING) == Plan(stop=("o0",))


def test_a_new_template_that_never_gets_ready_leaves_the_old_pods_serving() -> None:
    assert plan(pods("o+ o+ n- "), replicas=2, strategy=ROLLING) == Plan()


def test_old_pods_that_are_not_ready_go_at_once() -> None:
    assert plan(pods("o- o-"), replicas=2, strategy=ROLLING) == Plan(start=2, stop=("o1", "o0"))


def test_a_rolling_update_keeps_enough_pods_ready() -> None:
    # 4 replicas: at most 5 pods, at least 3 ready.
    first = plan(pods("o+ o+ o+ o+"), replicas=4, strategy=ROLLING)
    assert first == Plan(start=2, stop=("o3",))
    assert plan(pods("o+ o+ o+ n- n-"), replicas=4, strategy=ROLLING) == Plan()
    assert plan(pods("o+ o+ o+ n+ n-"), replicas=4, strategy=ROLLING) == Plan(start=1, stop=("o2",))


def test_recreate_stops_the_old_pods_before_starting_new_ones() -> None:
    assert plan(pods("o+ o+"), replicas=2, strategy=RECREATE) == Plan(stop=("o1", "o0"))
    assert plan([], replicas=2, strategy=RECREATE, old_terminating=1) == Plan()
    assert plan([], replicas=2, strategy=RECREATE) == Plan(start=2)
