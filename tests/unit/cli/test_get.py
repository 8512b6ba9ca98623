from __future__ import annotations

import pytest

from funcmesh.cli.get import _requested, render_tables
from funcmesh.client.responses import Table, TableColumn, TableRow
from funcmesh.errors import Invalid
from funcmesh.model.kinds import DEPLOYMENT, FUNCTION, POD, SERVICE

COLUMNS = (
    TableColumn(name="Name"),
    TableColumn(name="Status"),
    TableColumn(name="Memory", priority=1),
    TableColumn(name="Age"),
)


def row(namespace: str, *cells: object) -> TableRow:
    return TableRow(cells=cells, object={"metadata": {"name": cells[0], "namespace": namespace}})


def test_priority_columns_only_in_wide() -> None:
    table = Table(columns=COLUMNS, rows=(row("default", "hello", "Ready", "128Mi", "5m"),))
    assert render_tables([table], wide=False, with_namespace=False).splitlines() == [
        "NAME    STATUS   AGE",
        "hello   Ready    5m",
    ]


def test_wide_and_all_namespaces() -> None:
    table = Table(
        columns=COLUMNS,
        rows=(
            row("default", "hello", "Ready", "128Mi", "5m"),
            row("team-a", "echo", "Building", None, "2s"),
        ),
    )
    assert render_tables([table], wide=True, with_namespace=True).splitlines() == [
        "NAMESPACE   NAME    STATUS     MEMORY   AGE",
        "default     hello   Ready      128Mi    5m",
        "team-a      echo    Building   <none>   2s",
    ]


def test_rows_of_several_tables_share_the_headers() -> None:
    first = Table(columns=COLUMNS, rows=(row("default", "a", "Ready", "", "1s"),))
    second = Table(columns=COLUMNS, rows=(row("default", "bbbbbb", "Ready", "", "10s"),))
    assert render_tables([first, second], wide=False, with_namespace=False).splitlines() == [
        "NAME     STATUS   AGE",
        "a        Ready    1s",
        "bbbbbb   Ready    10s",
    ]


def test_kinds_and_names_as_kubectl_takes_them() -> None:
    assert _requested("functions", ("a", "b")) == [(FUNCTION, ("a", "b"))]
    assert _requested("deploy,svc", ()) == [(DEPLOYMENT, ()), (SERVICE, ())]
    assert _requested("pod/web-1", ("svc/web", "po/web-2")) == [
        (POD, ("web-1", "web-2")),
        (SERVICE, ("web",)),
    ]


@pytest.mark.parametrize(
    ("kind", "names", "message"),
    [
        ("pod/web", ("web-2",), "every argument must be KIND/NAME"),
        ("pod/", (), "every argument must be KIND/NAME"),
        ("deploy,svc", ("web",), "names cannot be given with several kinds"),
    ],
)
def test_mixed_forms_are_refused(kind: str, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        _requested(kind, names)
