"""Intake without the sender, for watch and intake tests: config, spool, intake, watchers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from forwarder import config, writers
from forwarder.intake import Intake
from forwarder.spool import Spool
from forwarder.watcher import Watcher


def make_config(tmp_path: Path, watch: str = "", routes: str = "", extra: str = "",
                dests: tuple[str, ...] = ("pacs",)) -> config.Config:
    """A config with one watch folder ``in`` (``watch``: extra YAML keys for it)."""
    incoming = tmp_path / "in"
    incoming.mkdir(parents=True, exist_ok=True)
    dest_yaml = "".join(f"  {d}: {{host: 127.0.0.1, port: 1}}\n" for d in dests)
    watch_yaml = textwrap.indent(textwrap.dedent(watch).strip(), "    ") if watch else ""
    if "min_age" not in watch:
        watch_yaml = "    min_age: 300ms\n" + watch_yaml
    text = (f"spool: {tmp_path / 'spool'}\n"
            f"watch:\n  - name: modality\n    path: {incoming}\n"
            f"{watch_yaml}\n"
            f"destinations:\n{dest_yaml}"
            + (f"routes:\n{textwrap.dedent(routes)}" if routes else
               f"routes:\n  - to: [{', '.join(dests)}]\n")
            + extra)
    return config.parse(text, "test.yaml")


class Pipeline:
    """Watchers feeding intake feeding the spool; a context manager."""

    def __init__(self, cfg: config.Config, events: bool = True,
                 intake_kw: dict[str, Any] | None = None, **watcher_kw: Any):
        writers.ignore_lease_breaks()  # as the daemon does: intake may ask for leases
        self.cfg = cfg
        self.spool = Spool(cfg.spool)
        self.fatal: list[BaseException] = []
        self.intake = Intake(cfg, self.spool, on_fatal=self.fatal.append, **(intake_kw or {}))
        self.watchers = [Watcher(w, self.intake.offer, events=events,
                                 known=self.spool.left_unchanged, **watcher_kw)
                         for w in cfg.watch]

    def __enter__(self) -> Pipeline:
        self.intake.start()
        for w in self.watchers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.watchers:
            w.stop()
        self.intake.stop()
        self.spool.close()
        assert not self.fatal, self.fatal

    def objects(self) -> list[dict[str, Any]]:
        with self.spool._lock:
            rows = self.spool.db.execute(
                "SELECT name, source, sop_instance, sha256 FROM objects ORDER BY id").fetchall()
        return [dict(zip(("name", "source", "sop_instance", "sha256"), r, strict=True))
                for r in rows]

    def jobs(self) -> list[tuple[str, str, str]]:
        with self.spool._lock:
            return [tuple(r) for r in self.spool.db.execute(
                "SELECT j.destination, j.state, o.sop_instance FROM jobs j JOIN objects o "
                "ON o.id = j.object_id ORDER BY j.id")]
