from __future__ import annotations

import base64
import copy
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.admission import Admission
from funcmesh.errors import Invalid
from funcmesh.model.kinds import FUNCTION
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog

CODE = "def handler(event, context):\n    return 'hi'\n"
PYTHON = Runtime.python(version=(3, 11), executable=Path("/usr/bin/python3.11"))
ADMISSION = Admission(RuntimeCatalog.from_runtimes([PYTHON]))


def zipped(files: dict[str, str]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return base64.b64encode(buffer.getvalue()).decode()


def function(name: str = "fn", **spec: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runtime": "python3.11",
            "handler": "mod.handler",
            "function": CODE,
            "function-content-type": "text",
            **spec,
        },
    }


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_a_good_function_is_admitted_with_the_function_label() -> None:
    admitted = ADMISSION.admit(FUNCTION, function(checksum=sha256(CODE)), None)

    assert admitted["metadata"]["labels"] == {"function": "fn"}


@pytest.mark.parametrize(
    ("obj", "field", "message"),
    [
        (function(checksum=sha256("other")), "spec.checksum",
         'Function "fn" is invalid: spec.checksum: checksum mismatch: spec says '),
        (function(**{"function": "%%%", "function-content-type": "base64"}), "spec.function",
         'Function "fn" is invalid: spec.function: function content is not valid base64'),
        (function(**{"function": zipped({"other.py": CODE}),
                     "function-content-type": "base64+zip"}), "spec.handler",
         'spec.handler: handler module "mod" not found in the archive (it holds: other.py)'),
        (function(**{"function": base64.b64encode(b"PK garbage").decode(),
                     "function-content-type": "base64+zip"}), "spec.function",
         "spec.function: corrupt zip archive: File is not a zip file"),
        (function(**{"function": zipped({"mod.py": CODE}),
                     "function-content-type": "base64+zip+deps"}), "spec.function-content-type",
         "the archive holds no requirements.txt"),
        (function(**{"function": "ftp://example.com/mod.py", "function-content-type": "url"}),
         "spec.function", "needs an http:// or https:// address"),
        (function("Not_A_Label"), "metadata.name", "a DNS-1123 label must consist of"),
        (function(runtime="python2.7"), "spec.runtime", "Python 2 reached end of life"),
    ],
)  # fmt: skip
def test_bad_functions_are_refused_naming_the_field(
    obj: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        ADMISSION.admit(FUNCTION, obj, None)

    assert message in str(caught.value)
    assert [cause.field for cause in caught.value.causes] == [field]


def test_url_content_is_not_downloaded_at_admission() -> None:
    obj = function(
        **{"function": "http://127.0.0.1:9/mod.py", "function-content-type": "url"},
        checksum=sha256("whatever is served there"),
    )

    assert ADMISSION.admit(FUNCTION, obj, None)["spec"]["function-content-type"] == "url"


def test_unchanged_code_is_not_checked_again_on_update() -> None:
    # stored before admission checked content: a label or status change must still go through
    stored = function(checksum=sha256("other"))
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"] = {"team": "a"}

    admitted = ADMISSION.admit(FUNCTION, relabelled, stored)

    assert admitted["metadata"]["labels"] == {"team": "a", "function": "fn"}


def test_changed_code_is_checked_on_update() -> None:
    stored = function(checksum=sha256(CODE))
    changed = function(checksum=sha256(CODE), function="def handler(event, context): pass\n")

    with pytest.raises(Invalid, match="checksum mismatch"):
        ADMISSION.admit(FUNCTION, changed, stored)
