"""The fork server and the resource tracker are forks of the daemon, so they share its
imported libraries' pages instead of holding copies of their own (forwarder.prefork)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.corpus import unique_copies
from tests.daemonutil import DaemonProcess, drop, process_tree, running, worker_pids, write_config
from tests.peers import wait_for


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_daemon_forks_its_fork_server_and_resource_tracker(make_scp, tmp_path: Path) -> None:
    peer = make_scp()
    cfg = write_config(tmp_path, peer.port)
    copies = unique_copies(tmp_path / "corpus", 3)
    d = DaemonProcess(cfg, tmp_path)
    try:
        d.wait_ready()
        drop(list(copies.values()), tmp_path / "in")
        wait_for(lambda: len(peer.received) == 3, 30, "the three files stored at the peer")
        assert {r.sop_instance for r in peer.received} == set(copies)
        workers = set(worker_pids(d.proc.pid, "pacs"))
        helpers = [p for p in process_tree(d.proc.pid)[1:] if p not in workers]
        assert len(workers) == 1 and len(helpers) == 2, (workers, helpers)
        # an exec'd one would read "python -B -c from multiprocessing.forkserver import ..."
        assert all(_cmdline(p) == _cmdline(d.proc.pid) for p in helpers), \
            [_cmdline(p) for p in helpers]
        assert sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in helpers) == \
            ["fwd-forkserver", "fwd-tracker"]
    finally:
        rc = d.stop()
    assert rc == 0
    wait_for(lambda: not any(running(p) for p in helpers), 15,
             "the fork server and the resource tracker to end with the daemon")


def test_start_forks_only_a_single_threaded_process_and_workers_then_run() -> None:
    """With a second thread running, nothing is forked (multiprocessing execs them later);
    once alone, the forked server starts processes and the forked tracker answers, and
    output buffered before the fork is written once."""
    code = textwrap.dedent("""
        import gc, os, threading, warnings
        from multiprocessing import forkserver, resource_tracker
        from forwarder import prefork, runtime
        warnings.simplefilter("error")  # a tracker found dead is relaunched with a warning
        runtime.setup()
        gate = threading.Event()
        t = threading.Thread(target=gate.wait)
        t.start()
        assert prefork.start() is False
        assert forkserver._forkserver._forkserver_pid is None
        gate.set()
        t.join()
        print("before")  # still in this process's buffer (stdout is a pipe)
        assert prefork.start() is True
        assert gc.get_freeze_count() > 0
        assert prefork.start() is False  # already running
        server = forkserver._forkserver._forkserver_pid
        tracker = resource_tracker._resource_tracker._pid
        p = runtime.worker_context().Process(target=os.getppid)
        p.start()
        p.join(30)
        assert p.exitcode == 0, p.exitcode
        resource_tracker.ensure_running()  # probes it: no relaunch
        assert resource_tracker._resource_tracker._pid == tracker
        assert forkserver._forkserver._forkserver_pid == server
        assert os.waitpid(server, os.WNOHANG) == (0, 0)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.stdout.split() == ["before", "ok"], out.stderr  # written once, not per fork


def test_a_fork_that_fails_leaves_the_start_to_multiprocessing() -> None:
    """No process to spare at start (fork fails): the daemon goes on, and multiprocessing
    starts the fork server its own way when the first worker starts."""
    code = textwrap.dedent("""
        import errno, os
        from multiprocessing import forkserver
        from forwarder import prefork, runtime
        runtime.setup()
        real_fork = os.fork
        def no_fork():
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        os.fork = no_fork
        assert prefork.start() is False
        os.fork = real_fork
        assert forkserver._forkserver._forkserver_pid is None
        p = runtime.worker_context().Process(target=os.getppid)
        p.start()
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        server = forkserver._forkserver._forkserver_pid
        with open(f"/proc/{server}/cmdline", "rb") as f:
            assert b"multiprocessing.forkserver" in f.read()  # exec'd, as without prefork
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_worker_imports_nothing_at_its_start_that_the_daemon_had_not() -> None:
    """What a worker needs as it starts (its Process object and heartbeat's shared double,
    the codec socket uses for a host name) is imported before the fork, so its pages are
    shared, not loaded again privately in each worker."""
    code = textwrap.dedent("""
        import socket, sys
        import forwarder.daemon
        from forwarder import prefork, runtime

        def child(before, beat, port):
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                pass
            print(" ".join(sorted(set(sys.modules) - before)), flush=True)

        runtime.setup()
        assert prefork.start()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            ctx = runtime.worker_context()
            before = frozenset(sys.modules)
            p = ctx.Process(target=child, args=(before, ctx.RawValue("d", 0.0),
                                                listener.getsockname()[1]))
            p.start()
            p.join(60)
        assert p.exitcode == 0, p.exitcode
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # the fork server's own preload (it ignores SIGTERM) is the one module it adds
    assert out.stdout.split() == ["forwarder.forkserve"], out.stdout
