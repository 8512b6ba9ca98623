"""``get KIND -w``: the table first, then one line per change, as ``kubectl get -w`` prints them.

Changes come from a watch on the raw objects (from the list's resourceVersion); each added or
modified object is printed as the server's Table row for it, aligned under the first table's
columns. A deleted object is printed as its last row seen with the STATUS cell ``Deleted``.
A label selector is applied here, on the watched objects. Read-only; runs until interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from funcmesh.cli.output import cell_text
from funcmesh.errors import NotFound
from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of, namespace_of
from funcmesh.model.selectors import parse_selector

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient
    from funcmesh.client.responses import Table

COLUMN_GAP = "   "
DELETED = "Deleted"


@dataclass(slots=True, kw_only=True)
class WatchPrinter:
    """Turns rows into lines with fixed column widths; remembers each object's last row."""

    headers: list[str]
    shown: list[int]
    with_namespace: bool
    widths: list[int] = field(default_factory=list)
    last_rows: dict[str, list[str]] = field(default_factory=dict)

    def start(self, table: Table) -> list[str]:
        """The header and the table's rows; fixes the column widths for later lines."""
        rows = [self._cells(row.object, row.cells) for row in table.rows]
        self.widths = [
            max(len(cell) for cell in column) for column in zip(self.headers, *rows, strict=True)
        ]
        return [self.line(self.headers), *(self.line(cells) for cells in rows)]

    def changed(self, obj: RawObject, cells: Sequence[object]) -> str:
        return self.line(self._cells(obj, cells))

    def deleted(self, obj: RawObject) -> str | None:
        cells = self.last_rows.pop(_key(obj), None)
        if cells is None:
            return None
        if "STATUS" in self.headers:
            cells[self.headers.index("STATUS")] = DELETED
        return self.line(cells)

    def line(self, cells: Sequence[str]) -> str:
        widths = [*self.widths, *([0] * (len(cells) - len(self.widths)))]
        return COLUMN_GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    def _cells(self, obj: RawObject, cells: Sequence[object]) -> list[str]:
        texts = [cell_text(cells[i]) if i < len(cells) else "" for i in self.shown]
        row = [namespace_of(obj), *texts] if self.with_namespace else texts
        self.last_rows[_key(obj)] = row
        return row


def _key(obj: RawObject) -> str:
    return f"{namespace_of(obj)}/{name_of(obj)}"


def watch_tables(
    client: ApiClient,
    rt: ResourceType,
    namespace: str,
    *,
    name: str | None,
    selector: str | None,
    wide: bool,
    all_namespaces: bool,
    echo: Callable[[str], None],
) -> None:
    """Print the current table, then a line per change, until interrupted."""
    listing = client.list(rt, namespace, selector=selector, all_namespaces=all_namespaces)
    table = client.table(rt, namespace, name, selector=selector, all_namespaces=all_namespaces)
    shown = [i for i, column in enumerate(table.columns) if wide or column.priority == 0]
    headers = [table.columns[i].name.upper() for i in shown]
    printer = WatchPrinter(
        headers=["NAMESPACE", *headers] if all_namespaces else headers,
        shown=shown,
        with_namespace=all_namespaces,
    )
    for first in printer.start(table):
        echo(first)
    matches = parse_selector(selector).matches if selector else None
    resource_version = listing.resource_version
    field_selector = f"metadata.name={name}" if name else None
    while True:  # the server ends a watch after its timeout: go on from the last version
        for event in client.watch(
            rt,
            namespace,
            resource_version=resource_version,
            all_namespaces=all_namespaces,
            field_selector=field_selector,
        ):
            resource_version = str(metadata_of(event.object).get("resourceVersion") or "")
            if matches is None or matches(labels_of(event.object)):
                line = _event_line(client, rt, printer, event.type, event.object)
                if line is not None:
                    echo(line)


def _event_line(
    client: ApiClient, rt: ResourceType, printer: WatchPrinter, kind: str, obj: RawObject
) -> str | None:
    if kind == "DELETED":
        return printer.deleted(obj)
    try:
        table = client.table(rt, namespace_of(obj), name_of(obj))
    except NotFound:  # gone again before we asked
        return printer.deleted(obj)
    if not table.rows:
        return None
    return printer.changed(obj, table.rows[0].cells)
