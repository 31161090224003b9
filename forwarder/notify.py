"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING over ``NOTIFY_SOCKET``.

Spoken directly (a datagram on an AF_UNIX socket, see sd_notify(3)), or through
systemd-python when it is installed; silent when ``NOTIFY_SOCKET`` is unset, so the
daemon runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` lines as one message; False when there is no service manager."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    message = "\n".join(lines)
    try:
        from systemd import daemon  # type: ignore[attr-defined]

        return bool(daemon.notify(message))
    except ImportError:
        pass
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode("utf-8", "replace"))
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when the
    service manager expects none from this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        return None


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload (systemd 253) expects."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=stopping: finishing C-STOREs in flight")
