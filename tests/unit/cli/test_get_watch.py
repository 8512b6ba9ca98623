"""The lines ``get -w`` prints: the table, then one aligned line per change."""

from __future__ import annotations

from funcmesh.cli.get_watch import WatchPrinter
from funcmesh.client.responses import Table, TableColumn, TableRow

COLUMNS = (TableColumn(name="Name"), TableColumn(name="Status"), TableColumn(name="Age"))


def pod(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default"}}


def printer() -> WatchPrinter:
    return WatchPrinter(headers=["NAME", "STATUS", "AGE"], shown=[0, 1, 2], with_namespace=False)


def test_changes_are_aligned_under_the_first_table() -> None:
    watch = printer()
    table = Table(
        columns=COLUMNS, rows=(TableRow(cells=("web-1", "Running", "5s"), object=pod("web-1")),)
    )

    assert watch.start(table) == ["NAME    STATUS    AGE", "web-1   Running   5s"]
    assert watch.changed(pod("web-2"), ("web-2", "Pending", "0s")) == "web-2   Pending   0s"


def test_a_deleted_object_shows_its_last_row_as_deleted() -> None:
    watch = printer()
    watch.start(Table(columns=COLUMNS, rows=()))
    watch.changed(pod("web-2"), ("web-2", "Running", "1s"))

    assert watch.deleted(pod("web-2")) == "web-2   Deleted   1s"
    assert watch.deleted(pod("never-seen")) is None


def test_namespace_column_and_hidden_columns() -> None:
    watch = WatchPrinter(headers=["NAMESPACE", "NAME", "AGE"], shown=[0, 2], with_namespace=True)
    watch.start(Table(columns=COLUMNS, rows=()))

    assert watch.changed(pod("web-3"), ("web-3", "Running", "2s")) == "default     web-3   2s"
