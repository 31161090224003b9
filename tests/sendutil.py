"""Sender test helpers: destinations from YAML, real files queued in a spool."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from forwarder import config
from forwarder.config import Destination
from forwarder.dicomfile import probe
from forwarder.sender import DestinationSender
from forwarder.spool import Incoming, Spool
from tests.peers import wait_for


def destination(port: int, yaml: str = "", name: str = "pacs") -> Destination:
    """A destination on 127.0.0.1:``port`` with fast retries; ``yaml``: more keys."""
    body = textwrap.indent(textwrap.dedent(yaml).strip(), "    ")
    text = (f"spool: /unused\ndestinations:\n  {name}:\n    host: 127.0.0.1\n"
            f"    port: {port}\n")
    if "retry:" not in yaml:
        text += "    retry: {initial: 100ms, max: 400ms, jitter: 0.1}\n"
    if "timeouts:" not in yaml:
        text += "    timeouts: {connect: 2s, acse: 5s, dimse: 5s, network: 5s}\n"
    text += f"{body}\nroutes:\n  - to: [{name}]\n"
    return config.parse(text).destinations[name]


def enqueue(spool: Spool, files: list[Path], dests: tuple[str, ...] = ("pacs",),
            batch: int = 500) -> list[str]:
    """Accept real files into the spool (as intake would, in batches); their SOP Instance
    UIDs in order."""
    uids = []
    for i in range(0, len(files), batch):
        fds = [os.open(p, os.O_RDONLY) for p in files[i:i + batch]]
        try:
            items = [Incoming(fd, str(p), probe(p), dests, link_ok=False)
                     for fd, p in zip(fds, files[i:i + batch], strict=True)]
            spool.accept(items)
        finally:
            for fd in fds:
                os.close(fd)
        uids += [it.probe.sop_instance_uid for it in items]
    return uids


def states(spool: Spool, dest: str = "pacs") -> dict[str, int]:
    return {k: v for k, v in spool.status([dest])["destinations"][dest].items()
            if k in ("pending", "sending", "done", "failed")}


def settled(spool: Spool, dest: str = "pacs") -> bool:
    s = states(spool, dest)
    return s["pending"] == 0 and s["sending"] == 0


def run(spool: Spool, dest: Destination, until, timeout: float = 30.0,  # noqa: ANN001
        what: str = "the queue to drain") -> DestinationSender:
    with DestinationSender(dest, "FORWARDER", spool) as sender:
        wait_for(until, timeout, what)
    return sender
