"""Start flow runs from a warm process: ``python -m prefect.engine`` without paying its imports.

    work pool / deployment job variable (instead of the default ``python -m prefect.engine``):
    command: sh -c 'exec python "$BATCH_REPO_DIR/deployments/warm_engine.py"'

Each flow-run process of the process worker spends ~3 s of CPU importing Prefect, its engine,
the pull steps and our flows (sqlalchemy, aiohttp, redis) before its first item
(docs/benchmarks.md, "Many tenants"). This command is what the worker starts instead: a small
client, standard library only, that hands the run to a warm process on the same host, which
has imported all of that once and forks a child per run:

- the client sends its stdin/stdout/stderr, environment, working directory and pid over a UNIX
  socket (in a directory only this user can enter); the warm process forks; the child takes
  that environment, directory and output, refreshes Prefect's settings from it and runs
  ``prefect.engine`` as ``__main__``, as the cold command would;
- the client forwards SIGTERM/SIGINT/SIGHUP to the child and exits with its exit code; when the
  client dies (the worker's process tree killed), the child kills itself at once (it watches
  the client's pidfd), so killing a worker still kills its runs;
- no warm process yet (first run on a host, code or settings changed): the client starts one
  and waits for it up to ``WAIT_S`` (a burst of runs shares one warm-up instead of paying it
  each), then falls back to exec'ing the cold ``python -m prefect.engine``.

The warm process is per host, user, Python, checkout and environment (a fingerprint of the
interpreter, every ``*.py`` of the repository's packages with its mtime, and the environment
without the per-run ``PREFECT__*`` variables): changed code or settings get a new one. It
exits after ``IDLE_EXIT_S`` without a run. Its log: ``<socket>.log``.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time

__all__ = ["main"]

IDLE_EXIT_S = 3600
WAIT_S = 30  # a run waits this long for a warm process that is starting, then starts cold
PACKAGES = ("batchlib", "db", "tasks", "flows", "deployments")
COLD = [sys.executable, "-m", "prefect.engine"]


# -- both sides ------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_RUN = ("PWD", "OLDPWD", "SHLVL", "_")  # and every PREFECT__* variable (the worker's per-run ones)


def _fingerprint(env: dict[str, str]) -> str:
    root = ROOT
    digest = hashlib.sha256(f"{sys.executable}\0{root}".encode())
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(f"{path}\0{os.stat(path).st_mtime_ns}\0".encode())
    for key in sorted(env):
        if not key.startswith("PREFECT__") and key not in PER_RUN:
            digest.update(f"{key}={env[key]}\0".encode())
    return digest.hexdigest()[:16]


def _socket_path(fingerprint: str) -> str | None:
    """In a directory only this user can enter (the client sends its environment: credentials);
    None when it is not ours or not private."""
    import stat

    folder = os.path.join(tempfile.gettempdir(), f"batch-warm-engine-{os.getuid()}")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        return None
    return os.path.join(folder, f"{fingerprint}.sock")


def _send(sock: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(payload).encode()
    header = struct.pack("!I", len(data))
    if fds:
        sock.sendmsg([header + data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(header + data)


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict | None, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(with_fds * fds.itemsize) if with_fds else 0)
    for level, kind, cmsg in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cmsg[: len(cmsg) - (len(cmsg) % fds.itemsize)])
    if not data:
        return None, list(fds)
    (size,) = struct.unpack("!I", data[:4])
    body = data[4:]
    while len(body) < size:
        more = sock.recv(size - len(body))
        if not more:
            return None, list(fds)
        body += more
    return json.loads(body), list(fds)


# -- the client (the worker's command) ---------------------------------------------------------
def client() -> int:
    env, cwd = dict(os.environ), os.getcwd()
    path = _socket_path(_fingerprint(env))
    if path is None:
        print("warm engine: no private socket directory: starting cold", file=sys.stderr, flush=True)
        os.execv(COLD[0], COLD)
    sock = _connect(path)
    if sock is None:
        _spawn_server(path, env)
        deadline = time.monotonic() + WAIT_S
        while sock is None and time.monotonic() < deadline:
            time.sleep(0.1)
            sock = _connect(path)
    reply = None
    if sock is not None:
        try:
            _send(sock, {"env": env, "cwd": cwd, "pid": os.getpid()}, [0, 1, 2])
            reply, _ = _recv(sock)
        except OSError:
            pass
    if reply is None or "child" not in reply:
        print("warm engine unavailable: starting cold", file=sys.stderr, flush=True)
        os.execv(COLD[0], COLD)
    assert sock is not None
    child = reply["child"]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda n, _f: _forward(child, n))
    while True:
        try:
            reply, _ = _recv(sock)
            break
        except InterruptedError:
            continue
    if reply is None:  # the warm process died: wait for the child itself
        return _wait_orphan(child)
    return int(reply["code"])


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _forward(child: int, signum: int) -> None:
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def _wait_orphan(child: int) -> int:
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return 1  # its exit code went to the dead warm process
        time.sleep(0.5)


def _spawn_server(path: str, env: dict[str, str]) -> None:
    import fcntl
    import subprocess

    with open(path + ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # one is starting
        fcntl.flock(lock, fcntl.LOCK_UN)
    pid = os.fork()  # through an intermediate process: the warm process is nobody's child
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        with open(path + ".log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "deployments.warm_engine", "--serve", path], cwd=ROOT,
                env={k: v for k, v in env.items() if not k.startswith("PREFECT__")},
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
    finally:
        os._exit(0)


# -- the warm process ----------------------------------------------------------------------------
def serve(path: str) -> int:
    import fcntl
    import selectors

    lock = open(path + ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another warm process holds this fingerprint
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _warm_up()
    import gc

    gc.collect()
    gc.freeze()  # the imported objects move to a permanent generation: children's collections leave their pages shared
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(64)
    os.replace(staging, path)
    inode = os.stat(path).st_ino
    print(f"warm engine {os.getpid()} ready on {path}", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}  # child pid -> its client's connection
    last_active = time.monotonic()
    try:
        while running or time.monotonic() - last_active < IDLE_EXIT_S:
            for _key, _ in selector.select(timeout=0.2):
                conn, _ = listener.accept()
                try:
                    request, fds = _recv(conn, with_fds=3)
                except OSError:
                    conn.close()
                    continue
                if request is None or len(fds) != 3:
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in (conn, *running.values()):
                        other.close()
                    _child(request, fds)  # never returns
                for fd in fds:
                    os.close(fd)
                running[pid] = conn
                print(f"flow-run process {pid} for client {request['pid']}", flush=True)
                _send(conn, {"child": pid})
            while running:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = running.pop(pid, None)
                if conn is not None:
                    try:
                        _send(conn, {"code": os.waitstatus_to_exitcode(status) % 256})
                    except OSError:
                        pass
                    conn.close()
                last_active = time.monotonic()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # not a successor's
                os.unlink(path)
        except OSError:
            pass
    return 0


def _warm_up() -> None:
    """Everything a flow run imports before its first item (no threads, no connections)."""
    import importlib

    import prefect._internal.metrics  # noqa: F401
    import prefect.deployments.steps  # noqa: F401
    import prefect.flow_engine  # noqa: F401

    from deployments.spec import load_specs

    for spec in load_specs():
        module = spec.entrypoint.split(":", 1)[0].removesuffix(".py").replace("/", ".")
        importlib.import_module(module)


def _child(request: dict, fds: list[int]) -> None:
    import random
    import threading

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the warm process's handler is not the engine's
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        random.seed()
        _die_with(request["pid"])
        import prefect.context

        prefect.context.refresh_global_settings_context()
        from batchcore.settings import get_settings

        get_settings.cache_clear()
        import runpy

        sys.argv = ["prefect.engine"]
        sys.modules.pop("prefect.engine", None)
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            threading._shutdown()  # what interpreter exit does: wait for non-daemon threads
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with(client_pid: int) -> None:
    """SIGKILL this process as soon as the client (the worker's child) is gone."""
    import select
    import threading

    try:
        pidfd = os.pidfd_open(client_pid)
    except OSError:
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="warm-engine-client-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(argv[1])
    return client()


if __name__ == "__main__":
    sys.exit(main())
