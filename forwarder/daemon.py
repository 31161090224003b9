"""The daemon: composition root for spool, intake, watchers and senders; signals; sd_notify.

Start order: recover the spool, start senders, intake and watchers, and only then
READY=1. The main thread does nothing but wait: for a signal (TERM/INT drain and stop,
HUP reload), for a fatal fault in a worker (the spool cannot write: exit 1 so systemd
restarts us), and for the next WATCHDOG=1 ping or STATUS= line. A worker thread or process
that dies stops the pings, so a wedged daemon is restarted rather than silently idle.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from forwarder import config, envcheck, logs, notify
from forwarder.config import Config
from forwarder.errors import EXIT_FAILURE, EXIT_OK, ConfigError, ForwarderError
from forwarder.intake import Intake
from forwarder.logs import event
from forwarder.sender import DestinationSender, backoff_policy
from forwarder.spool import Spool
from forwarder.spoollock import SpoolLock
from forwarder.watcher import Watcher

LOGGER = logging.getLogger(__name__)
STATUS_EVERY = 5.0
REMOVED = "removed from the configuration; its jobs are kept until it is configured again"


class Daemon:
    """``dicom-forwarder run``."""

    def __init__(self, config_path: str, log_target: str | None = None):
        self.config_path = config_path
        self.log_target = log_target
        self.cfg: Config | None = None
        self.spool: Spool | None = None
        self.intake: Intake | None = None
        self.watchers: dict[str, Watcher] = {}
        self.senders: dict[str, DestinationSender] = {}
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._fatal: BaseException | None = None
        self._status = ""
        self.lock: SpoolLock | None = None

    # --- signals and faults ----------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    def fatal(self, exc: BaseException) -> None:
        """A worker met a fault the daemon must not survive (spool write or fsync)."""
        if self._fatal is None:
            self._fatal = exc
        self._wake.set()

    # --- life --------------------------------------------------------------------

    def run(self) -> int:
        try:
            cfg = envcheck.load(self.config_path)
        except ConfigError as exc:  # logged as an event, found by its MESSAGE_ID
            logs.setup("info", self.log_target or "auto")
            event(LOGGER, "start_refused", "cannot start: %s", exc, level=logging.CRITICAL,
                  CONFIG_FILE=self.config_path)
            return exc.exit_code
        logs.setup(cfg.log.level, self.log_target or cfg.log.target, cfg.log.phi)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self._check(cfg)
            self._start(cfg)
        except (ForwarderError, OSError) as exc:
            # exit 78 (not restarted) for what a restart cannot fix: the configuration,
            # the spool's permissions, a missing secret, a second daemon on the spool
            event(LOGGER, "start_refused", "cannot start: %s", exc, level=logging.CRITICAL,
                  CONFIG_FILE=self.config_path)
            self._shutdown()
            return exc.exit_code if isinstance(exc, ForwarderError) else EXIT_FAILURE
        notify.ready(self._summary())
        event(LOGGER, "started", "dicom-forwarder running: %d watch folder(s), %d destination(s)",
              len(cfg.watch), len(cfg.destinations), CONFIG_FILE=self.config_path)
        rc = self._loop()
        notify.stopping()
        event(LOGGER, "stopping", "stopping: finishing C-STOREs in flight, releasing "
              "associations", level=logging.INFO)
        self._shutdown()
        LOGGER.info("stopped")
        return rc

    def _check(self, cfg: Config) -> None:
        """The environment, before anything in the spool is touched."""
        found = envcheck.check(cfg)
        for issue in found.warnings:
            event(LOGGER, "environment", "%s", issue, level=logging.WARNING,
                  CONFIG_FILE=self.config_path)
        if found.errors:
            raise ConfigError(found.errors)

    def _start(self, cfg: Config) -> None:
        self.cfg = cfg
        Path(cfg.spool).mkdir(parents=True, exist_ok=True)
        self.lock = SpoolLock(cfg.spool).acquire(self.config_path)
        self.spool = Spool(cfg.spool)
        caps = [backoff_policy(d) for d in cfg.destinations.values()]
        cap = max(caps, key=lambda p: p.max) if caps else None
        report = self.spool.recover(cap)
        LOGGER.info("spool %s recovered: %s", cfg.spool,
                    ", ".join(f"{k} {v}" for k, v in report.items()))
        self._hold_removed(cfg)
        for dest in cfg.destinations.values():
            self._start_sender(cfg, dest.name)
        self.intake = Intake(cfg, self.spool, on_fatal=self.fatal).start()
        for w in cfg.watch:
            self._start_watcher(w)

    def _start_sender(self, cfg: Config, name: str) -> None:
        assert self.spool is not None
        dest = cfg.destinations[name]
        health = self.spool.health(name)
        if health.state == "held" and health.reason == REMOVED:
            self.spool.set_health(name, "ok")
        self.senders[name] = DestinationSender(dest, cfg.calling_ae(dest), self.spool,
                                               on_fatal=self.fatal, log=self._log(cfg)).start()

    def _log(self, cfg: Config) -> tuple[str, str, bool]:
        """How worker processes log: as this process does."""
        return cfg.log.level, self.log_target or cfg.log.target, cfg.log.phi

    def _start_watcher(self, w: config.Watch) -> None:
        assert self.intake is not None
        self.watchers[w.name] = Watcher(w, self.intake.offer).start()

    def _hold_removed(self, cfg: Config) -> None:
        """A destination gone from the file but with jobs left is held, never dropped."""
        assert self.spool is not None
        for name, row in self.spool.status(()).get("destinations", {}).items():
            if name not in cfg.destinations and (row["pending"] or row["sending"]):
                self.spool.set_health(name, "held", None, REMOVED)
                event(LOGGER, "destination_held", "%s %s (%d pending)", name, REMOVED,
                      row["pending"], level=logging.WARNING, DESTINATION=name)

    def _loop(self) -> int:
        ping = notify.watchdog_interval()
        next_status = 0.0
        while True:
            timeout = min(ping or STATUS_EVERY, STATUS_EVERY)
            self._wake.wait(timeout)
            self._wake.clear()
            if self._fatal is not None:
                LOGGER.critical("stopping after a fatal fault: %s", self._fatal)
                return EXIT_FAILURE
            if self._stop:
                return EXIT_OK
            if self._reload:
                self._reload = False
                self.reload()
            if not self._alive():
                LOGGER.critical("a worker thread or process died; stopping so the service restarts")
                return EXIT_FAILURE
            if ping:
                notify.watchdog()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY
                text = self._summary()
                if text != self._status:
                    self._status = text
                    notify.status(text)

    def _alive(self) -> bool:
        intake_alive = self.intake is None or self.intake.alive
        return intake_alive and all(w.alive for w in self.watchers.values()) and \
            all(s.alive for s in self.senders.values())

    def _summary(self) -> str:
        """The one-line STATUS=: queued, failed, quarantined, destinations not ok."""
        if self.spool is None:
            return "starting"
        report = self.spool.status(self.cfg.destinations if self.cfg else ())
        d = report["destinations"]
        pending = sum(r["pending"] + r["sending"] for r in d.values())
        failed = sum(r["failed"] for r in d.values())
        text = f"queued {pending}, failed {failed}, quarantined {report['quarantined']}"
        for state in ("backoff", "held"):
            names = [n for n, r in d.items() if r["state"] == state]
            if names:
                text += f"; {state}: {', '.join(names)}"
        if self.intake is not None and self.intake.paused_full:
            text += "; intake paused: spool full"
        return text

    # --- reload ------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: validate the file first; a bad file keeps the running configuration."""
        assert self.cfg is not None and self.intake is not None and self.spool is not None
        notify.reloading()
        try:
            new = envcheck.load(self.config_path)
            found = envcheck.check(new)
            if found.errors:
                raise ConfigError(found.errors)
            for issue in found.warnings:
                event(LOGGER, "environment", "%s", issue, level=logging.WARNING,
                      CONFIG_FILE=self.config_path)
            if Path(new.spool).resolve() != Path(self.cfg.spool).resolve():
                raise ConfigError([config.ConfigIssue(self.config_path, None, "spool",
                                   "the spool cannot move while running; restart the "
                                   "service to use a new spool")])
        except ConfigError as exc:
            errors = "; ".join(str(i) for i in exc.issues)
            event(LOGGER, "reload_failed", "reload refused, still running the previous "
                  "configuration: %s", errors, level=logging.ERROR, CONFIG_FILE=self.config_path,
                  ERRORS=errors)
            notify.ready(self._summary())
            return
        old = self.cfg
        logs.setup(new.log.level, self.log_target or new.log.target, new.log.phi)
        self.intake.set_config(new)
        old_watch = {w.name: w for w in old.watch}
        new_watch = {w.name: w for w in new.watch}
        for name, w in old_watch.items():
            if new_watch.get(name) != w:
                self.watchers.pop(name).stop()
        for name, w in new_watch.items():
            if name not in self.watchers:
                try:
                    self._start_watcher(w)
                except OSError as exc:
                    LOGGER.error("watch %s not started: %s", name, exc)
        for name, dest in old.destinations.items():
            now = new.destinations.get(name)
            if now is None or now != dest or new.calling_ae(now) != old.calling_ae(dest) \
                    or self._log(new) != self._log(old):
                self.senders.pop(name).stop()
        self._hold_removed(new)
        for name in new.destinations:
            if name not in self.senders:
                self._start_sender(new, name)
        self.cfg = new
        event(LOGGER, "reload", "configuration reloaded from %s", self.config_path,
              CONFIG_FILE=self.config_path)
        notify.ready(self._summary())

    # --- stop --------------------------------------------------------------------

    def _shutdown(self) -> None:
        for w in self.watchers.values():
            w.stop()
        if self.intake is not None:
            self.intake.stop()
        stoppers = [threading.Thread(target=s.stop, name="fwd-stop") for s in self.senders.values()]
        for t in stoppers:  # every destination drains at once, within the stop timeout
            t.start()
        for t in stoppers:
            t.join()
        if self.spool is not None:
            self.spool.close()
        if self.lock is not None:
            self.lock.release()


def run(config_path: str, log_target: str | None = None) -> int:
    return Daemon(config_path, log_target).run()

