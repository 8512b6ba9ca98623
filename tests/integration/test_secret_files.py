"""Secret files reach real workers (Python from the zygote, Node.js processes) through real pools:
at ``$FUNCMESH_SECRETS_DIR`` always, at their mountPath in a private mount namespace when the
daemon runs as root, and nowhere else: not on the machine, not in another function's worker, not
in the zygote's memory."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import stat
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from funcmesh.cli.function_flags import FunctionFlags, build_function
from funcmesh.cli.sources import FunctionSource
from funcmesh.controllers.functions import FunctionController
from funcmesh.errors import NotFound, Unavailable
from funcmesh.model.conditions import find_condition
from funcmesh.model.function import Scaling
from funcmesh.model.kinds import EVENT, FUNCTION, SECRET
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.builds import DependencyBuilder
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from funcmesh.runtime.pool import FunctionPool, PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.secret_files import SECRETS_DIR_ENV, SecretFiles, SecretVolume
from funcmesh.runtime.starters import WorkerStarter
from funcmesh.runtime.stats import Metrics
from funcmesh.store.sqlite import Store

NOBODY = 65534
ROOT = os.geteuid() == 0
NODE = shutil.which("node")
SETPRIV = shutil.which("setpriv")
as_root = pytest.mark.skipif(not ROOT, reason="private mount namespaces need root")
with_node = pytest.mark.skipif(NODE is None or SETPRIV is None, reason="needs node and setpriv")

PYTHON = Runtime.python(
    version=sys.version_info[:2],
    executable=Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable))),
)

HANDLERS = {
    "probe.py": """
        import os

        def handler(event, context):
            asks = event["data"]
            out = {"uid": os.getuid(), "dir": os.environ.get("FUNCMESH_SECRETS_DIR"),
                   "token": os.environ.get("TOKEN"), "files": {}, "written": {}}
            for path in asks.get("read", []):
                try:
                    with open(path) as handle:
                        content = handle.read()
                    status = os.stat(path)
                    out["files"][path] = {"content": content, "mode": status.st_mode & 0o777,
                                          "uid": status.st_uid}
                except OSError as exc:
                    out["files"][path] = {"error": exc.strerror}
            for path in asks.get("write", []):
                try:
                    open(path, "w").close()
                    out["written"][path] = "written"
                except OSError as exc:
                    out["written"][path] = exc.strerror
            return out
    """,
    "probe.js": """
        const fs = require('fs');
        module.exports = {
          handler: (event) => {
            const out = { uid: process.getuid(), dir: process.env.FUNCMESH_SECRETS_DIR,
                          token: process.env.TOKEN, files: {} };
            for (const path of event.data.read || []) {
              try {
                out.files[path] = { content: fs.readFileSync(path, 'utf8'),
                                    mode: fs.statSync(path).mode & 0o777 };
              } catch (error) { out.files[path] = { error: error.code }; }
            }
            return out;
          },
        };
    """,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scratch:
    """A directory that workers running as nobody may pass through."""

    root: Path

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def host(self, name: str) -> Path:
        return self.root / "host" / name


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    root = Path(tempfile.mkdtemp(prefix="funcmesh-secrets-test-"))
    root.chmod(0o755)
    (root / "code").mkdir(mode=0o755)
    for name, text in HANDLERS.items():
        (root / "code" / name).write_text(textwrap.dedent(text))
    yield Scratch(root=root)
    shutil.rmtree(root, ignore_errors=True)


def make_pools(
    tmp_path: Path, *, uid: int | None, starters: Mapping[str, WorkerStarter] | None = None
) -> tuple[Pools, Zygotes]:
    zygotes = Zygotes()
    context = PoolContext(
        addresses=AddressPool("127.151.0.0/16"),
        zygotes=zygotes,
        limiter=MemoryLimiter(tmp_path / "no-cgroups"),
        logbook=LogBook(),
        worker_port=8080,
        max_queue=4,
        queue_wait_s=10.0,
        worker_uid=uid,
        worker_gid=uid,
        on_pod_change=lambda kind, instance: None,
        starters=dict(starters or {}),
    )
    return Pools(context=context, metrics=Metrics(CollectorRegistry()), pod_events=PodEvents()), (
        zygotes
    )


@pytest.fixture
async def root_pools(tmp_path: Path) -> AsyncIterator[Pools]:
    pools, zygotes = make_pools(tmp_path, uid=NOBODY)
    yield pools
    await pools.close()
    await zygotes.close()


@pytest.fixture
async def own_pools(tmp_path: Path) -> AsyncIterator[Pools]:
    """Workers keep the daemon's identity: the path of a daemon that is not root."""
    pools, zygotes = make_pools(tmp_path, uid=None)
    yield pools
    await pools.close()
    await zygotes.close()


def revision(
    scratch: Scratch,
    files: SecretFiles | None,
    *,
    name: str,
    volumes: tuple[SecretVolume, ...] = (),
    secret_env: tuple[tuple[str, str], ...] = (),
    runtime: Runtime = PYTHON,
    template_hash: str = "0123456789",
) -> Revision:
    """A revision as the function controller makes one: placed files, FUNCMESH_SECRETS_DIR."""
    env: tuple[tuple[str, str], ...] = (("PLAIN", f"plain-{name}"),)
    secrets_dir, mounted = None, ()
    if files is not None and volumes:
        placement = files.place(("default", name), template_hash, volumes)
        secrets_dir, mounted = placement.directory, placement.volumes
        env += ((SECRETS_DIR_ENV, secrets_dir),)
    return Revision(
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        generation=1,
        runtime=runtime,
        code_dir=scratch.code,
        sys_paths=(),
        module="probe",
        handler="handler",
        env=env,
        timeout_s=10.0,
        memory_limit=None,
        memory_limit_bytes=None,
        labels={},
        scaling=Scaling(),
        template_hash=template_hash,
        secret_env=secret_env,
        secret_volumes=mounted,
        secrets_dir=secrets_dir,
    )


async def probe(pool: FunctionPool, **asks: Any) -> dict[str, Any]:
    lease = await pool.acquire()
    started = time.monotonic()
    host, port = lease.address
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            response = await client.post(f"http://{host}:{port}/", json=asks)
    finally:
        lease.release(ok=True, status=200, duration_s=time.monotonic() - started)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def marker(label: str) -> str:
    return f"{label}-{base64.b32encode(os.urandom(10)).decode()}"


# --------------------------------------------------------------------------- Python, as root


PYTHON_3_8 = sorted(Path.home().glob(".pyenv/versions/3.8.*/bin/python3.8"))
OLDEST = (
    [Runtime.python(version=(3, 8), executable=PYTHON_3_8[-1])]
    if PYTHON_3_8
    else [pytest.param(None, marks=pytest.mark.skip(reason="no Python 3.8 on this machine"))]
)


@as_root
@pytest.mark.parametrize("runtime", [PYTHON, *OLDEST], ids=["current", "python3.8"])
async def test_as_root_the_files_are_in_that_worker_only(
    root_pools: Pools, scratch: Scratch, runtime: Runtime
) -> None:
    files = SecretFiles(root=scratch.secrets, private_mounts=True)
    files.start()
    value, token = marker("admin"), marker("token")
    db = SecretVolume(
        secret="db", mount_path=str(scratch.host("db")), files={"user": value.encode()}
    )
    pool = root_pools.deploy(
        revision(
            scratch,
            files,
            name="reader",
            volumes=(db,),
            secret_env=(("TOKEN", token),),
            runtime=runtime,
        )
    )
    in_dir = f"{files.mount_dir}/db/user"
    mounted = f"{scratch.host('db')}/user"
    seen = await probe(pool, read=[in_dir, mounted], write=[mounted, f"{files.mount_dir}/x"])
    assert seen["uid"] == NOBODY
    assert seen["dir"] == str(files.mount_dir)
    assert seen["token"] == token
    for path in (in_dir, mounted):
        assert seen["files"][path] == {"content": value, "mode": 0o400, "uid": NOBODY}
    assert set(seen["written"].values()) == {"Read-only file system"}

    # nothing on the machine: the mount point and the secrets directory are empty
    assert list(scratch.host("db").iterdir()) == []
    assert list(files.mount_dir.iterdir()) == []
    # and another function's worker, from the same zygote, sees nothing either
    other = root_pools.deploy(revision(scratch, files, name="other", runtime=runtime))
    seen = await probe(other, read=[in_dir, mounted])
    assert seen["files"] == {
        in_dir: {"error": "No such file or directory"},
        mounted: {"error": "No such file or directory"},
    }
    assert seen["token"] is None


@as_root
async def test_the_zygote_never_holds_a_secret_value(root_pools: Pools, scratch: Scratch) -> None:
    files = SecretFiles(root=scratch.secrets, private_mounts=True)
    files.start()
    value, token = marker("file-value"), marker("env-value")
    db = SecretVolume(secret="db", mount_path=None, files={"user": value.encode()})
    rev = revision(scratch, files, name="held", volumes=(db,), secret_env=(("TOKEN", token),))
    pool = root_pools.deploy(rev)
    seen = await probe(pool, read=[f"{files.mount_dir}/db/user"])
    assert seen["token"] == token
    assert seen["files"][f"{files.mount_dir}/db/user"]["content"] == value
    zygote = await root_pools._context.zygotes.zygote_for(str(PYTHON.executable))  # type: ignore[attr-defined]
    memory = read_memory(zygote.pid)
    plain = dict(rev.env)["PLAIN"].encode()
    assert plain in memory  # what travels in the spawn request stays in the zygote: see? ...
    for secret in (value, token):  # ... but the Secrets went past it, in the memfd
        assert secret.encode() not in memory
        assert base64.b64encode(secret.encode()) not in memory
    assert "file-value" not in repr(rev)
    assert "env-value" not in repr(rev)


def read_memory(pid: int) -> bytes:
    """Every readable private mapping of process ``pid`` (root may read any process)."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            match = re.match(r"([0-9a-f]+)-([0-9a-f]+) (r...)", line)
            if match is None or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError):
                continue
    return b"".join(chunks)


@as_root
async def test_a_mount_point_that_vanished_is_a_load_error_naming_it(
    root_pools: Pools, scratch: Scratch
) -> None:
    files = SecretFiles(root=scratch.secrets, private_mounts=True)
    files.start()
    value = marker("v")
    db = SecretVolume(
        secret="db", mount_path=str(scratch.host("db")), files={"user": value.encode()}
    )
    pool = root_pools.deploy(revision(scratch, files, name="vanished", volumes=(db,)))
    scratch.host("db").rmdir()
    error = await pool.warm()
    assert error is not None
    assert f"cannot mount {scratch.host('db')}" in error
    assert "No such file or directory" in error
    assert value not in error


# --------------------------------------------------------------------------- Python, not root


async def test_without_private_mounts_the_files_are_under_the_secrets_dir_only(
    own_pools: Pools, scratch: Scratch
) -> None:
    files = SecretFiles(root=scratch.secrets, private_mounts=False)
    files.start()
    value, token = marker("admin"), marker("token")
    db = SecretVolume(
        secret="db", mount_path=str(scratch.host("db")), files={"user": value.encode()}
    )
    rev = revision(scratch, files, name="plain", volumes=(db,), secret_env=(("TOKEN", token),))
    assert rev.secret_volumes == ()  # nothing for the worker to mount
    pool = own_pools.deploy(rev)
    directory = scratch.secrets / "default" / "plain" / "0123456789"
    seen = await probe(pool, read=[f"{directory}/db/user", f"{scratch.host('db')}/user"])
    assert seen["dir"] == str(directory)
    assert seen["token"] == token
    assert seen["files"][f"{directory}/db/user"]["content"] == value
    assert seen["files"][f"{directory}/db/user"]["mode"] == 0o400
    assert seen["files"][f"{scratch.host('db')}/user"] == {"error": "No such file or directory"}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not scratch.host("db").exists()  # no mount point is made: nothing mounts there
    await own_pools.remove("default", "plain")
    files.release(("default", "plain"))
    assert not directory.exists()


# --------------------------------------------------------------------------- Node.js


def node_runtime() -> Runtime:
    assert NODE is not None
    return Runtime.nodejs(major=20, executable=Path(os.path.realpath(NODE)))


@pytest.fixture
async def node_starter(
    scratch: Scratch, request: pytest.FixtureRequest
) -> AsyncIterator[NodeStarter]:
    uid = request.param
    starter = NodeStarter(
        addresses=AddressPool("127.152.0.0/16"),
        port=8080,
        shim=install_shim(scratch.root / "runtime"),
        spares=1,
        uid=uid,
        gid=uid,
        setpriv=SETPRIV,
    )
    yield starter
    await starter.close()


async def warm_spare(starter: NodeStarter, timeout_s: float = 10.0) -> int:
    executable = str(node_runtime().executable)
    starter.prepare(executable)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        warm = [s.pid for s in starter.spares(executable) if s.hello.done()]
        if warm:
            return warm[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no warm Node.js spare")


@as_root
@with_node
@pytest.mark.parametrize("node_starter", [NOBODY], indirect=True)
async def test_a_node_instance_with_secrets_mounts_them_in_a_fresh_process(
    node_starter: NodeStarter, scratch: Scratch, tmp_path: Path
) -> None:
    spare = await warm_spare(node_starter)
    pools, zygotes = make_pools(tmp_path, uid=NOBODY, starters={"nodejs": node_starter})
    try:
        files = SecretFiles(root=scratch.secrets, private_mounts=True)
        files.start()
        value, token = marker("admin"), marker("token")
        db = SecretVolume(
            secret="db", mount_path=str(scratch.host("db")), files={"user": value.encode()}
        )
        rev = revision(
            scratch,
            files,
            name="noder",
            volumes=(db,),
            secret_env=(("TOKEN", token),),
            runtime=node_runtime(),
        )
        pool = pools.deploy(rev)
        in_dir, mounted = f"{files.mount_dir}/db/user", f"{scratch.host('db')}/user"
        seen = await probe(pool, read=[in_dir, mounted])
        assert seen["uid"] == NOBODY
        assert seen["token"] == token
        for path in (in_dir, mounted):
            assert seen["files"][path] == {"content": value, "mode": 0o400}
        assert list(scratch.host("db").iterdir()) == []
        [instance] = pool.instances
        assert instance.process is not None
        assert instance.process.pid != spare  # the spare, running as nobody, could not mount
        assert spare in [s.pid for s in node_starter.spares(str(node_runtime().executable))]
    finally:
        await pools.close()
        await zygotes.close()


@with_node
@pytest.mark.parametrize("node_starter", [None], indirect=True)
async def test_without_private_mounts_a_node_spare_serves_the_files_on_disk(
    node_starter: NodeStarter, scratch: Scratch, tmp_path: Path
) -> None:
    spare = await warm_spare(node_starter)
    pools, zygotes = make_pools(tmp_path, uid=None, starters={"nodejs": node_starter})
    try:
        files = SecretFiles(root=scratch.secrets, private_mounts=False)
        files.start()
        value, token = marker("admin"), marker("token")
        db = SecretVolume(secret="db", mount_path="/db", files={"user": value.encode()})
        rev = revision(
            scratch,
            files,
            name="noder",
            volumes=(db,),
            secret_env=(("TOKEN", token),),
            runtime=node_runtime(),
        )
        pool = pools.deploy(rev)
        path = f"{rev.secrets_dir}/db/user"
        seen = await probe(pool, read=[path])
        assert seen["token"] == token
        assert seen["files"][path] == {"content": value, "mode": 0o400}
        [instance] = pool.instances
        assert instance.process is not None
        assert instance.process.pid == spare  # no start-up needs: the warm spare took it
    finally:
        await pools.close()
        await zygotes.close()


# --------------------------------------------------------------------------- the controller


@pytest.fixture
async def controller_rig(
    tmp_path: Path, scratch: Scratch, own_pools: Pools
) -> AsyncIterator[tuple[Store, FunctionController, Pools]]:
    """The function controller of a daemon that is not root, on a real store and real pools."""
    store = await Store.open(tmp_path / "state.db")
    files = SecretFiles(root=scratch.secrets, private_mounts=False)
    files.start()
    controller = FunctionController(
        store=store,
        catalog=RuntimeCatalog([PYTHON]),
        builder=DependencyBuilder(root=tmp_path / "deps"),
        pools=own_pools,
        logbook=LogBook(),
        code_root=tmp_path / "code",
        secret_files=files,
    )
    await controller.start()
    yield store, controller, own_pools
    await controller.close()
    await store.close()


async def ready_condition(
    store: Store, name: str, wanted: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        obj = await store.get(FUNCTION, "default", name)
        status = obj.get("status") or {}
        ready = find_condition(status, "Ready")
        if (
            ready is not None
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and wanted(ready)
        ):
            return obj
        assert time.monotonic() < deadline, f"not reached; status: {status}"
        await asyncio.sleep(0.02)


async def put_secret(store: Store, name: str, value: str) -> None:
    obj = {
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": {"key": base64.b64encode(value.encode()).decode()},
    }
    try:
        current = await store.get(SECRET, "default", name)
    except NotFound:
        await store.create(SECRET, obj)
    else:
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await store.update(SECRET, obj)


async def test_the_controller_waits_for_a_secret_and_follows_its_changes(
    controller_rig: tuple[Store, FunctionController, Pools], scratch: Scratch
) -> None:
    store, _, pools = controller_rig
    flags = FunctionFlags(
        runtime=PYTHON.id,
        handler="probe.handler",
        source=FunctionSource(
            content=textwrap.dedent(HANDLERS["probe.py"]), content_type="text", checksum=""
        ),
        secrets=("db",),
    )
    await store.create(FUNCTION, build_function(name="probe", namespace="default", flags=flags))
    missing = await ready_condition(store, "probe", lambda c: c["reason"] == "SecretMissing")
    assert find_condition(missing["status"], "Ready")["message"] == (  # type: ignore[index]
        'Secret "db" not found in namespace default (mounted at /db)'
    )
    pool = pools.lookup("default", "probe")
    assert pool is not None
    with pytest.raises(Unavailable, match='SecretMissing: Secret "db" not found'):
        await pool.acquire()

    first, second = marker("first"), marker("second")
    await put_secret(store, "db", first)
    ready = await ready_condition(store, "probe", lambda c: c["status"] == "True")
    mounted = find_condition(ready["status"], "SecretsMounted")
    assert mounted is not None
    assert (mounted["status"], mounted["reason"]) == ("False", "NoMountNamespace")
    assert "not mounted at /db" in mounted["message"]
    assert "$FUNCMESH_SECRETS_DIR" in mounted["message"]
    revision = pool.revision
    assert revision is not None
    assert revision.secrets_dir is not None
    path = f"{revision.secrets_dir}/db/key"
    assert (await probe(pool, read=[path]))["files"][path]["content"] == first

    await put_secret(store, "db", second)
    deadline = time.monotonic() + 20
    while pool.revision is revision:
        assert time.monotonic() < deadline, "no new revision for the changed Secret"
        await asyncio.sleep(0.02)
    assert pool.revision is not None
    assert pool.revision.secrets_dir is not None
    new_path = f"{pool.revision.secrets_dir}/db/key"
    assert (await probe(pool, read=[new_path]))["files"][new_path]["content"] == second
    while Path(revision.secrets_dir).exists():  # the old instance stopped: its files go
        assert time.monotonic() < deadline, "the old revision's files stayed"
        await asyncio.sleep(0.02)

    await store.delete(FUNCTION, "default", "probe")
    function_dir = scratch.secrets / "default" / "probe"
    while function_dir.exists():
        assert time.monotonic() < deadline, "the function's files stayed after its deletion"
        await asyncio.sleep(0.02)
    text = "\n".join(" ".join(map(str, e.values())) for e in (await store.list_objects(EVENT))[0])
    assert "SecretMissing" in text
    assert first not in text
    assert second not in text
