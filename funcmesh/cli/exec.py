"""``funcmesh exec POD -- CMD ARGS``: run a command the way a pod's process runs.

funcmesh pods are processes on this machine, so ``exec`` runs CMD here, as the user who types
it, with the pod's environment (``spec.containers[0].env`` holds all of it: HOST, PORT, POD_*,
the service links and the container's own variables) in the pod's working directory, and exits
with CMD's exit code (128 + N when a signal N ended it), like ``kubectl exec``. Standard input,
output and error are the terminal's, so ``-i``/``-t`` are accepted and change nothing.

When the pod has its own resolv.conf (its ``spec.dnsConfig``: a root daemon's workloads) and
``exec`` runs as root, CMD gets the same DNS settings as the pod's process: ``exec`` writes the
pod's resolv.conf and hosts again from the Pod object, and CMD runs in a mount namespace of its
own where they are bind-mounted over ``/etc``'s (private: the machine never sees them), with
the pod's host name in a UTS namespace, as the launcher of the pod's process does.

A pod with a mesh identity finds its certificate files in ``$FUNCMESH_MESH_CERTS_DIR``, which a
root daemon puts on a tmpfs of the pod's own: the machine sees an empty directory there. As
root, ``exec`` asks the API for a certificate of the pod's identity (its service account) and
mounts its files over that directory in CMD's mount namespace, so CMD presents the pod's
identity as the pod's process does.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click

from funcmesh.cli.mesh import write_certificate
from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.client.api import MeshCertificate
from funcmesh.errors import FuncmeshError, Invalid, Unavailable
from funcmesh.model.kinds import POD
from funcmesh.model.objects import RawObject
from funcmesh.model.pod_dns import pod_hostname, pod_hosts, resolv_conf

EXIT_CANNOT_RUN = 126  # the command exists but cannot run (as a shell reports it)
EXIT_NOT_FOUND = 127
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 0x40000
MESH_CERTS_ENV: Final = "FUNCMESH_MESH_CERTS_DIR"  # as funcmesh.runtime.replicas sets it


@dataclass(frozen=True, slots=True, kw_only=True)
class PodFiles:
    """The pod's own /etc files (name -> content) and host name."""

    files: dict[str, str]
    hostname: str


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--stdin", "_stdin", is_flag=True, help="Accepted; stdin is always passed.")
@click.option("-t", "--tty", "_tty", is_flag=True, help="Accepted; the terminal is yours.")
@global_options
@click.pass_context
def exec_command(
    ctx: click.Context, /, pod: str, command: Sequence[str], _stdin: bool, _tty: bool
) -> None:
    """Run COMMAND with a pod's environment and working directory: exec POD -- CMD ARGS."""
    words = list(command[1:] if command and command[0] == "--" else command)
    if not words:
        raise click.UsageError("give the command after --: exec POD -- CMD ARGS")
    session = session_of(ctx)
    name = pod.removeprefix("pod/").removeprefix("pods/")
    obj = session.client().get(POD, session.namespace, name)
    env, cwd = pod_environment(obj), pod_working_dir(obj)
    etc = pod_files(obj)
    root = os.geteuid() == 0
    if etc is not None and not root:
        click.echo(
            "note: CMD keeps this machine's /etc/resolv.conf (the pod's needs root)", err=True
        )
        etc = None
    certs: tuple[str, MeshCertificate] | None = None
    certs_dir = env.get(MESH_CERTS_ENV)
    if certs_dir and root:
        account = str((obj.get("spec") or {}).get("serviceAccountName") or "default")
        try:
            certs = certs_dir, session.client().mesh_certificate(session.namespace, account)
        except FuncmeshError as exc:
            click.echo(f"note: CMD finds no mesh certificate in {certs_dir}: {exc}", err=True)
    elif certs_dir and not Path(certs_dir, "cert-chain.pem").is_file():
        click.echo(f"note: CMD finds no mesh certificate in {certs_dir} (it needs root)", err=True)
    ctx.exit(_run(words, env=env, cwd=cwd, etc=etc, certs=certs))


def pod_environment(pod: RawObject) -> dict[str, str]:
    """The environment of the pod's process, from its first container's ``env``."""
    env = {"PATH": os.defpath}
    for item in _container(pod).get("env") or ():
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            env[item["name"]] = str(item.get("value") or "")
    return env


def pod_working_dir(pod: RawObject) -> str | None:
    working_dir = _container(pod).get("workingDir")
    return str(working_dir) if working_dir else None


def pod_files(pod: RawObject) -> PodFiles | None:
    """The resolv.conf (and hosts) the pod's process sees; None when it has the machine's."""
    spec, metadata = pod.get("spec") or {}, pod.get("metadata") or {}
    dns_config = spec.get("dnsConfig")
    if not isinstance(dns_config, dict) or spec.get("dnsPolicy", "ClusterFirst") == "Default":
        return None
    name = str(metadata.get("name") or "")
    hostname = spec.get("hostname") if isinstance(spec.get("hostname"), str) else None
    files = {"resolv.conf": resolv_conf(dns_config)}
    ip = (pod.get("status") or {}).get("podIP")
    if isinstance(ip, str) and ip and name:
        subdomain = spec.get("subdomain") if isinstance(spec.get("subdomain"), str) else None
        files["hosts"] = pod_hosts(
            ip=ip,
            pod_name=name,
            namespace=str(metadata.get("namespace") or "default"),
            hostname=hostname,
            subdomain=subdomain,
        )
    return PodFiles(files=files, hostname=pod_hostname(name, hostname) if name else "")


def _container(pod: RawObject) -> dict[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return containers[0] if isinstance(containers[0], dict) else {}


def _run(
    words: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    etc: PodFiles | None = None,
    certs: tuple[str, MeshCertificate] | None = None,
) -> int:
    """Run CMD; with ``etc`` or ``certs`` (the directory CMD finds them in, and the
    certificate), in a mount namespace of its own where they are bind-mounted."""
    if cwd is not None and not Path(cwd).is_dir():
        raise Unavailable(f"the pod's working directory {cwd} is gone: is the pod still running?")
    if etc is None and certs is None:
        return _run_here(words, env=env, cwd=cwd)
    with tempfile.TemporaryDirectory(prefix="funcmesh-exec-") as directory:
        mounts: dict[str, str] = {}  # target -> source
        for name, text in (etc.files if etc is not None else {}).items():
            path = Path(directory, name)
            path.write_text(text)
            path.chmod(0o644)
            mounts[f"/etc/{name}"] = str(path)
        if certs is not None:
            target, issued = certs
            write_certificate(Path(directory, "mesh-certs"), issued)
            mounts[target] = str(Path(directory, "mesh-certs"))
        enter = _entering_pod(mounts, etc.hostname if etc is not None else "")
        return _run_here(words, env=env, cwd=cwd, before_exec=enter)


def _run_here(
    words: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    before_exec: Callable[[], None] | None = None,
) -> int:
    try:
        completed = subprocess.run(words, env=env, cwd=cwd, check=False, preexec_fn=before_exec)
    except FileNotFoundError:
        click.echo(f'error: exec: "{words[0]}": executable file not found in $PATH', err=True)
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        click.echo(f'error: exec: "{words[0]}": {exc.strerror}', err=True)
        return EXIT_CANNOT_RUN
    except OSError as exc:
        raise Invalid(f'exec: "{words[0]}": {exc.strerror or exc}') from exc
    code = completed.returncode
    return 128 - code if code < 0 else code


def _entering_pod(files: dict[str, str], hostname: str) -> Callable[[], None]:
    """What the child runs before the exec: a private mount namespace with ``files`` (target
    -> source, files or directories) bind-mounted, and ``hostname`` (if any) in a UTS
    namespace. Runs between fork and exec, so a failure is written to stderr, not raised: CMD
    runs on with what is in place."""
    libc = ctypes.CDLL(None, use_errno=True)
    mounts = [(source.encode(), target.encode()) for target, source in files.items()]
    name = hostname.encode()

    def enter() -> None:
        try:
            _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
            _check(libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "/")
            for source, target in mounts:
                _check(libc.mount(source, target, None, ctypes.c_ulong(MS_BIND), None), target)
            if name:
                _check(libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
        except OSError as exc:
            message = f"note: not all of the pod's files apply to CMD: {exc.strerror}\n"
            os.write(2, message.encode())

    return enter


def _check(result: int, what: str | bytes) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        label = what.decode() if isinstance(what, bytes) else what
        raise OSError(errno, f"{label}: {os.strerror(errno)}")
