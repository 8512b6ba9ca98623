"""Content negotiation: what representation a client asks for, and decoding request bodies.

kubectl asks for Tables (``application/json;as=Table;v=v1;g=meta.k8s.io``) and for aggregated
discovery (``application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io``), each with
plain JSON as the fallback; the first range we can serve wins. Bodies are JSON or YAML, or
protobuf for the few kinds kubectl's typed clients send that way (see ``protobuf``). This module
is pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from funcmesh.api.protobuf import PROTOBUF_CONTENT_TYPE, decode_protobuf_object
from funcmesh.api.status import BadRequest, UnsupportedMediaType
from funcmesh.errors import Invalid
from funcmesh.model.codec import load_json_object, load_yaml_object
from funcmesh.model.objects import RawObject

TABLE_VERSIONS = ("v1", "v1beta1")
DISCOVERY_VERSIONS = ("v2", "v2beta1")
JSON_TYPES = frozenset({"application/json", "", "*/*", "text/plain"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaRange:
    type: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_accept(header: str) -> list[MediaRange]:
    ranges = []
    for part in header.split(","):
        media_type, *raw_params = (piece.strip() for piece in part.split(";"))
        params = {}
        for raw in raw_params:
            key, _, value = raw.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        if media_type:
            ranges.append(MediaRange(type=media_type.lower(), params=params))
    return ranges


def _first_as(header: str, *, as_kind: str, group: str, versions: tuple[str, ...]) -> str | None:
    """The version of the first ``as=<kind>`` range, or None when plain JSON comes first."""
    for media in parse_accept(header):
        if media.type not in ("application/json", "*/*", "application/*"):
            continue
        if "as" not in media.params:
            return None
        if (
            media.params.get("as") == as_kind
            and media.params.get("g") == group
            and media.params.get("v") in versions
        ):
            return media.params["v"]
    return None


def table_version(accept: str) -> str | None:
    """``v1`` or ``v1beta1`` when the client wants a Table, else None."""
    return _first_as(accept, as_kind="Table", group="meta.k8s.io", versions=TABLE_VERSIONS)


def discovery_version(accept: str) -> str | None:
    """``v2`` or ``v2beta1`` when the client wants aggregated discovery, else None."""
    return _first_as(
        accept,
        as_kind="APIGroupDiscoveryList",
        group="apidiscovery.k8s.io",
        versions=DISCOVERY_VERSIONS,
    )


def decode_object(content_type: str, body: bytes) -> RawObject:
    """A JSON or YAML object body; BadRequest when it does not parse."""
    if not body.strip():
        raise BadRequest("the request body is empty; send the object as JSON or YAML")
    try:
        if content_type in YAML_TYPES:
            return load_yaml_object(body)
        if content_type in JSON_TYPES:
            return load_json_object(body)
        if content_type == PROTOBUF_CONTENT_TYPE:
            return decode_protobuf_object(body)
    except Invalid as exc:
        raise BadRequest(str(exc)) from exc
    raise UnsupportedMediaType(
        f'content type "{content_type}" is not supported; send application/json or '
        "application/yaml"
    )


def decode_json(body: bytes, *, what: str) -> Any:
    """Any JSON value (a patch document may be an array); BadRequest when it does not parse."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from exc
