"""One pod of a Deployment: its process, restarts with backoff, probes, and its v1 Pod view.

A replica keeps its name and pod IP for its whole life, as a Kubernetes pod does; its container
(the process) is restarted whenever it exits, whatever the exit code (``restartPolicy:
Always``): the first restart at once, then after ``base``, ``2 base``, ... up to ``30 base``
(the kubelet's 10 s doubling to 5 minutes), the count starting over after the process ran for
``60 base``. Meanwhile the Pod shows ``CrashLoopBackOff``; a command that cannot start shows
``RunContainerError`` with the reason. The readiness probe decides the Ready condition (without
one a started process is ready); a liveness probe that fails ``failureThreshold`` times stops
the process, which is then restarted like a crashed one. ``terminate`` stops it for good:
SIGTERM, and SIGKILL after ``terminationGracePeriodSeconds``.

Must not: decide how many replicas run (``funcmesh.runtime.workloads``), or read Services
(the service environment comes in as a callable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from funcmesh.model.containers import Probe, command_line, environment_of
from funcmesh.model.deployments import DeploymentSpec, PodTemplate
from funcmesh.model.objects import RawObject, rfc3339
from funcmesh.runtime.mesh_credentials import MeshCredential
from funcmesh.runtime.probes import ProbeCounter, ProbeResult, check
from funcmesh.runtime.workload_context import WorkloadContext, deployment_log_name, take_pod_address
from funcmesh.runtime.workload_pods import workload_pod
from funcmesh.runtime.workload_processes import LaunchSpec, StartFailed, WorkloadProcess, launch

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8080  # PORT when the container declares none
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MESH_CERTS_ENV: Final = "FUNCMESH_MESH_CERTS_DIR"  # Istio's file names in it
MESH_CERTS_DIR: Final = "mesh-certs"  # in the pod's home (a private tmpfs as root)
MAX_BACKOFF_FACTOR: Final = 30  # 10 s doubling up to 300 s
RESET_BACKOFF_FACTOR: Final = 60  # a process that ran 600 s starts the count over
_SEQUENCE = itertools.count()

ServiceEnv = Callable[[], Mapping[str, str]]


def backoff_delay_s(failures: int, base_s: float) -> float:
    """Wait before the restart after the ``failures``-th exit in a row: 0, then doubling."""
    if failures <= 1:
        return 0.0
    return float(min(base_s * 2 ** (failures - 2), base_s * MAX_BACKOFF_FACTOR))


class Replica:
    """One pod: a supervised process on its own IP."""

    def __init__(
        self,
        *,
        deployment: DeploymentSpec,
        name: str,
        context: WorkloadContext,
        service_env: ServiceEnv,
        on_change: Callable[[Replica], None],
    ) -> None:
        self.namespace, self.deployment = deployment.namespace, deployment.name
        self.owner_uid = deployment.uid
        self.template: PodTemplate = deployment.template
        self.name = name
        self.uid = str(uuid.uuid4())
        self.sequence = next(_SEQUENCE)
        self.created_at = time.time()
        self.port = self.template.container.first_port or DEFAULT_PORT
        self.ip = take_pod_address(context.addresses, self.port)
        self.home = context.scratch_root / f"{self.namespace}_{name}"
        self.cwd = self.template.container.working_dir or str(self.home)
        self.etc = (  # its own resolv.conf and hosts: None when it keeps the machine's
            None
            if context.dns is None
            else context.dns.pod_etc(
                namespace=self.namespace,
                pod=name,
                ip=self.ip,
                hostname=self.template.hostname,
                subdomain=self.template.subdomain,
            )
        )
        self.env: dict[str, str] = {}
        self.ready = False
        self.ready_since: float | None = None  # monotonic: for minReadySeconds
        self.ready_changed_at = self.created_at  # wall clock: for the Ready condition
        self.restart_count = 0
        self.started_at: float | None = None
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.deleted_at: float | None = None
        self.process: WorkloadProcess | None = None
        self.credential: MeshCredential | None = None  # its mesh identity's, once started
        self.gone = asyncio.Event()
        self._context = context
        self._service_env = service_env
        self._on_change = on_change
        self._stop = asyncio.Event()
        # The LogBook keeps a ring per pod (what `logs POD` reads) and one per "function": here
        # the Deployment, under a name no Function can have; Workloads forgets it.
        self._sink = context.logbook.instance_sink(
            self.namespace, deployment_log_name(deployment.name), name
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def terminating(self) -> bool:
        return self.deleted_at is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod-{self.namespace}-{self.name}")

    def terminate(self) -> None:
        """Stop for good (SIGTERM, SIGKILL after the grace period); ``gone`` is set after."""
        if self.deleted_at is None:
            self.deleted_at = time.time()
            self._set_ready(False)
            self._stop.set()
            self._changed()

    # the container's life

    async def _run(self) -> None:
        failures = 0
        try:
            await asyncio.to_thread(self._prepare_home)
            if (credentials := self._context.mesh_credentials) is not None:
                self.credential = await credentials.credential(
                    self.namespace, self.template.service_account
                )
            while not self._stop.is_set():
                began = time.monotonic()
                await self._run_container(restart=failures > 0)
                if self._stop.is_set():
                    break
                ran_s = time.monotonic() - began
                base_s = self._context.restart_backoff_s
                failures = 1 if ran_s >= base_s * RESET_BACKOFF_FACTOR else failures + 1
                if await self._back_off(backoff_delay_s(failures, base_s)):
                    break
        except Exception:
            logger.exception("pod %s/%s failed", self.namespace, self.name)
        finally:
            await self._clean_up()

    async def _back_off(self, delay_s: float) -> bool:
        """Wait before the next start; whether the replica was terminated meanwhile."""
        if delay_s > 0:
            error = (self.state.get("waiting") or {}).get("message")
            message = (
                f"back-off {delay_s:g}s restarting failed container={self.template.container.name}"
                f" pod={self.name}" + (f": {error}" if error else "")
            )
            self.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._changed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay_s)
        return self._stop.is_set()

    async def _run_container(self, *, restart: bool) -> None:
        """Start the process and supervise it until it ends; a restart counts once started
        (or once it failed to start)."""
        self.env = self._environment()
        spec = self._launch_spec(command_line(self.template.container, self.env))
        began = time.time()
        try:
            self.process = await launch(spec, output=self._sink, python=self._context.python)
        except StartFailed as exc:
            self.restart_count += restart
            self._record_exit(128, began=began, reason="StartError", message=str(exc))
            self.state = {"waiting": {"reason": "RunContainerError", "message": str(exc)}}
            self._changed()
            return
        self.restart_count += restart
        self.started_at = began
        self.state = {"running": {"startedAt": rfc3339(began)}}
        self._set_ready(self.template.container.readiness is None)
        self._changed()
        await self._supervise(self.process)

    async def _supervise(self, process: WorkloadProcess) -> None:
        """Wait for the exit, a stop or a failed liveness probe; probes run meanwhile."""
        unhealthy: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        probes = self._start_probes(unhealthy)
        stopping = asyncio.create_task(self._stop.wait())
        try:
            events: set[asyncio.Future[Any]] = {process.exited, stopping, unhealthy}
            await asyncio.wait(events, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*probes, stopping):
                task.cancel()
            await asyncio.gather(*probes, stopping, return_exceptions=True)
            if not process.exited.done():
                if self._stop.is_set():
                    await asyncio.shield(self._leave_services())
                await asyncio.shield(process.stop(self.template.termination_grace_s))
        self.process = None
        self._set_ready(False)
        code = process.exited.result()
        message = ""
        if unhealthy.done():
            message = f"killed after failing its liveness probe: {unhealthy.result()}"
        self._record_exit(code, began=self.started_at or time.time(), message=message)
        self.state = {"terminated": self.last_state["terminated"]}
        self._changed()

    async def _leave_services(self) -> None:
        """Before the SIGTERM of a replica going away: no new connection through a VIP may
        reach it (bounded: a slow update never holds the stop up for long)."""
        hook = self._context.before_stop
        if hook is None:
            return
        try:
            await asyncio.wait_for(hook(self.ip), self._context.before_stop_wait_s)
        except TimeoutError:
            logger.warning(
                "pod %s/%s: its VIP rules did not update in time", self.namespace, self.name
            )
        except Exception:  # the hook's failure must not keep a pod from stopping
            logger.exception(
                "pod %s/%s: leaving the Service VIPs failed", self.namespace, self.name
            )

    def _record_exit(self, code: int, *, began: float, reason: str = "", message: str = "") -> None:
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": rfc3339(began),
            "finishedAt": rfc3339(),
        }
        if code < 0:
            terminated["signal"] = -code
        if message:
            terminated["message"] = message
        self.last_state = {"terminated": terminated}
        if not self.terminating:
            logger.info(
                "pod %s/%s: container exited (%s, code %d) %s",
                self.namespace,
                self.name,
                terminated["reason"],
                exit_code,
                message,
            )

    def _environment(self) -> dict[str, str]:
        """Service links, then what funcmesh sets, then the container's own env on top."""
        base = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": self.template.hostname or self.name,
            **self._service_env(),
            **(self._context.dns.environment(self.namespace) if self._context.dns else {}),
            "HOST": self.ip,
            "PORT": str(self.port),
            "POD_IP": self.ip,
            "POD_NAME": self.name,
            "POD_NAMESPACE": self.namespace,
        }
        if self.credential is not None:
            base[MESH_CERTS_ENV] = str(self.home / MESH_CERTS_DIR)
        return environment_of(self.template.container, base)

    # probes

    def _start_probes(self, unhealthy: asyncio.Future[str]) -> list[asyncio.Task[None]]:
        container = self.template.container
        tasks = []
        if container.readiness is not None:
            counter = ProbeCounter(container.readiness, state=False)

            def on_readiness(result: ProbeResult) -> None:
                if counter.record(result.ok):
                    self._set_ready(counter.state)
                    self._changed()

            tasks.append(self._probe_task("readiness", container.readiness, on_readiness))
        if container.liveness is not None:
            alive = ProbeCounter(container.liveness, state=True)

            def on_liveness(result: ProbeResult) -> None:
                if alive.record(result.ok) and not unhealthy.done():
                    unhealthy.set_result(result.message)

            tasks.append(self._probe_task("liveness", container.liveness, on_liveness))
        return tasks

    def _probe_task(
        self, kind: str, probe: Probe, on_result: Callable[[ProbeResult], None]
    ) -> asyncio.Task[None]:
        return asyncio.create_task(self._probe(probe, on_result), name=f"{kind}-{self.name}")

    async def _probe(self, probe: Probe, on_result: Callable[[ProbeResult], None]) -> None:
        await asyncio.sleep(probe.initial_delay_s)
        while True:
            result = await check(
                probe.action, pod_ip=self.ip, timeout_s=probe.timeout_s, run_exec=self._exec
            )
            if not result.ok:
                logger.debug("probe of %s/%s failed: %s", self.namespace, self.name, result.message)
            on_result(result)
            await asyncio.sleep(probe.period_s)

    async def _exec(self, command: tuple[str, ...], timeout_s: float) -> ProbeResult:
        """An exec probe: the command in the container's environment, directory and /etc."""
        try:
            process = await launch(
                self._launch_spec(command), output=None, python=self._context.python
            )
        except StartFailed as exc:
            return ProbeResult(ok=False, message=str(exc))
        try:
            code = await asyncio.wait_for(asyncio.shield(process.exited), timeout_s)
        except TimeoutError:
            code = None
        finally:
            if not process.exited.done():
                process.kill()
                await asyncio.shield(process.exited)
        if code is None:
            return ProbeResult(ok=False, message=f"command timed out after {timeout_s:g}s")
        return ProbeResult(ok=code == 0, message="" if code == 0 else f"exit code {code}")

    def _launch_spec(self, argv: tuple[str, ...]) -> LaunchSpec:
        """``argv`` to run as the container runs: environment, directory, user, /etc files."""
        return LaunchSpec(
            argv=argv,
            env=self.env,
            cwd=self.cwd,
            uid=self._context.worker_uid,
            gid=self._context.worker_gid,
            etc_dir=None if self.etc is None else str(self.etc.directory),
            hostname=None if self.etc is None else self.etc.hostname,
            mesh_fd=None if self.credential is None else self.credential.reader_fd,
            mesh_dir=None if self.credential is None else str(self.home / MESH_CERTS_DIR),
        )

    # state

    def _set_ready(self, ready: bool) -> None:
        if ready and self.terminating:
            return
        if ready != self.ready:
            self.ready = ready
            self.ready_since = time.monotonic() if ready else None
            self.ready_changed_at = time.time()

    def _changed(self) -> None:
        self._on_change(self)

    def _prepare_home(self) -> None:
        if self.etc is not None:
            self.etc.write()
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._context.worker_uid is not None:
            gid = self._context.worker_gid if self._context.worker_gid is not None else -1
            os.chown(self.home, self._context.worker_uid, gid)

    async def _clean_up(self) -> None:
        process, self.process = self.process, None
        if process is not None and not process.exited.done():
            process.kill()
            await asyncio.shield(process.exited)
        self._context.addresses.give_back(self.ip)
        self._context.logbook.forget_pod(self.namespace, self.name)
        await asyncio.to_thread(shutil.rmtree, self.home, ignore_errors=True)
        if self.etc is not None:
            await asyncio.to_thread(self.etc.remove)
        self.gone.set()
        self._changed()

    def pod_object(self) -> RawObject:
        """The v1 Pod the API shows for this replica."""
        return workload_pod(self)
