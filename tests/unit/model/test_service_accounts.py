"""The service account of a pod template (``serviceAccountName``), the ``sa`` of the mesh
identity: Functions and Deployments, ``default`` when none is named, a bad name refused."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.deployments import admit_deployment, parse_deployment, template_hash
from funcmesh.model.function import parse_function
from tests.unit.model.test_deployments import deployment
from tests.unit.model.test_function import KUBELESS_EXAMPLE, with_changes

FUNCTION_FIELD = "spec.deployment.spec.template.spec.serviceAccountName"
FUNCTION_PATH = "spec/deployment/spec/template/spec/serviceAccountName"
DEPLOYMENT_PATH = "spec/template/spec/serviceAccountName"


@pytest.mark.parametrize(
    ("given", "account"),
    [(None, "default"), ("", "default"), ("caller", "caller"), ("ci.bot-1", "ci.bot-1")],
)
def test_a_function_runs_as_the_service_account_its_template_names(
    given: str | None, account: str
) -> None:
    obj = KUBELESS_EXAMPLE if given is None else with_changes(FUNCTION_PATH, given)

    assert parse_function(obj).service_account == account


@pytest.mark.parametrize("given", ["Caller", "a_b", 42, "-x"])
def test_a_function_with_a_bad_service_account_is_refused_naming_the_field(given: Any) -> None:
    with pytest.raises(Invalid) as caught:
        parse_function(with_changes(FUNCTION_PATH, given))

    assert [cause.field for cause in caught.value.causes] == [FUNCTION_FIELD]


@pytest.mark.parametrize(("given", "account"), [(None, "default"), ("frontend", "frontend")])
def test_a_deployment_runs_as_the_service_account_its_template_names(
    given: str | None, account: str
) -> None:
    obj = admit_deployment(deployment(**({DEPLOYMENT_PATH: given} if given else {})), None)

    assert parse_deployment(obj).template.service_account == account


def test_another_service_account_is_another_template() -> None:
    plain = deployment()
    other = deployment(**{DEPLOYMENT_PATH: "frontend"})

    assert template_hash(plain["spec"]["template"]) != template_hash(other["spec"]["template"])


def test_a_deployment_with_a_bad_service_account_is_refused_naming_the_field() -> None:
    with pytest.raises(Invalid) as caught:
        admit_deployment(deployment(**{DEPLOYMENT_PATH: "Front_End"}), None)

    causes = {cause.field: cause.message for cause in caught.value.causes}
    assert list(causes) == ["spec.template.spec.serviceAccountName"]
    assert "DNS-1123 subdomain" in causes["spec.template.spec.serviceAccountName"]
