"""The daemon: composition root for spool, intake, watchers and senders; signals; sd_notify.

Start order: recover the spool, start senders, intake and watchers, and only then
READY=1. The main thread does nothing but wait on a pipe: signals write into it
(``signal.set_wakeup_fd``; the handlers only set flags), and so does a fatal fault in a
worker (the spool cannot write: exit 1 so systemd restarts us). Between wake-ups it sends
WATCHDOG=1 and STATUS=. It pings only while intake and every worker show progress (their
heartbeats) or wait by choice, so a wedged daemon is restarted rather than silently idle;
a worker process that dies is started again by its sender.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from forwarder import config, logs, notify, prefork, runtime, watchstate, writers
from forwarder.config import Config, envcheck
from forwarder.errors import EXIT_FAILURE, EXIT_OK, ConfigError, ForwarderError, SpoolFull
from forwarder.intake import Intake
from forwarder.logs import event
from forwarder.sender import DestinationSender, backoff_policy
from forwarder.spool import Spool
from forwarder.spool.durable import FULL, creating
from forwarder.spool.health import REMOVED
from forwarder.spool.retention import Keeper
from forwarder.spoollock import SpoolLock
from forwarder.watcher import Watcher

LOGGER = logging.getLogger(__name__)
STATUS_EVERY = 5.0
RECHECK_REMOVED = 60.0  # after a reload: how long destinations it removed are looked for


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
        self.keeper: Keeper | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = False
        self._reload = False
        self._fatal: BaseException | None = None
        self._status = ""
        self._stuck = False
        self.published: watchstate.Publisher | None = None  # watch-state.json
        self._recheck_removed_until = 0.0  # see RECHECK_REMOVED
        self.lock: SpoolLock | None = None

    # --- signals and faults ----------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Flags only: the wakeup fd has already woken the main loop (no lock is taken
        here, so a signal can never deadlock against the code it interrupted)."""
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:  # full: a wake-up is pending anyway
            pass

    def _sleep(self, timeout: float) -> None:
        """Until a signal, a fatal fault or ``timeout``; take every wake-up pending."""
        select.select([self._wake_r], [], [], max(0.0, timeout))
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def fatal(self, exc: BaseException) -> None:
        """A worker met a fault the daemon must not survive (spool write or fsync)."""
        if self._fatal is None:
            self._fatal = exc
        self._wake()

    # --- life --------------------------------------------------------------------

    def run(self) -> int:
        runtime.setup()
        try:
            cfg = envcheck.load(self.config_path)
        except ConfigError as exc:  # logged as an event, found by its MESSAGE_ID
            logs.setup("info", self.log_target or "auto")
            event(LOGGER, "start_refused", "cannot start: %s", exc, level=logging.CRITICAL,
                  CONFIG_FILE=self.config_path)
            return exc.exit_code
        prefork.start()  # while this is the only thread: see forwarder.prefork
        logs.setup(cfg.log.level, self.log_target or cfg.log.target, cfg.log.phi,
                   paths=cfg.log.paths)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        writers.ignore_lease_breaks()  # intake asks for leases (see forwarder.writers)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            cfg = self._check(cfg)
            self._start(cfg)
        except (ForwarderError, OSError) as exc:
            # exit 78 (not restarted) for what a restart cannot fix: the configuration,
            # the spool's permissions, a missing secret, a second daemon on the spool
            why: object = exc
            if isinstance(exc, SpoolFull) or (isinstance(exc, OSError) and exc.errno in FULL):
                # exit 1: restarted, it starts once there is room
                why = (f"{exc} (the spool {cfg.spool}): free space on its file system; "
                       "the service is restarted and starts once there is room (after "
                       "5 tries in 10 minutes: systemctl reset-failed, then start)")
            event(LOGGER, "start_refused", "cannot start: %s", why, level=logging.CRITICAL,
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
        busy = [pid for s in self.senders.values() for pid in s.still_busy()]
        if busy:
            LOGGER.warning("stopped, but %d sender process(es) (pid %s) are still in a "
                           "C-STORE; each records its outcome in the spool and exits after "
                           "it, within its dimse timeout", len(busy),
                           ", ".join(map(str, busy)))
        else:
            LOGGER.info("stopped")
        return rc

    def _check(self, cfg: Config) -> Config:
        """The environment, before anything in the spool is touched; ``cfg`` with what
        the check read for it (negotiation profiles)."""
        found = envcheck.check(cfg)
        for issue in found.warnings:
            event(LOGGER, "environment", "%s", issue, level=logging.WARNING,
                  CONFIG_FILE=self.config_path)
        if found.errors:
            raise ConfigError(found.errors)
        return envcheck.with_profiles(cfg, found)

    def _start(self, cfg: Config) -> None:
        self.cfg = cfg
        self.published = watchstate.Publisher(cfg.spool)
        with creating(cfg.spool):
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
        self.keeper = Keeper(self.spool)
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
        assert self.intake is not None and self.spool is not None
        self.watchers[w.name] = Watcher(w, self.intake.offer, on_state=self._wake,
                                          known=self.spool.left_unchanged).start()

    def _hold_removed(self, cfg: Config) -> None:
        """A destination gone from the file but with jobs left, failed ones too, is held,
        never dropped: ``purge --removed-destination`` knows by that that no sender is at
        work for it. Said once: one held so already is left as it is."""
        assert self.spool is not None
        for name, row in self.spool.status(()).get("destinations", {}).items():
            if name in cfg.destinations or (row["state"], row["last_error"]) == \
                    ("held", REMOVED):
                continue
            if row["pending"] or row["sending"] or row["failed"]:
                self.spool.set_health(name, "held", None, REMOVED)
                event(LOGGER, "destination_held", "%s %s (%d pending, %d failed)", name,
                      REMOVED, row["pending"] + row["sending"], row["failed"],
                      level=logging.WARNING, DESTINATION=name)

    def _loop(self) -> int:
        ping = notify.watchdog_interval()
        next_status = 0.0
        while True:
            timeout = min(ping or STATUS_EVERY, STATUS_EVERY)
            self._sleep(timeout)
            if self._fatal is not None:  # a spool's sudden "disk I/O error": say why
                on = ""
                if self.cfg is not None and envcheck.read_only(self.cfg.spool):
                    on = f"; the spool is on a {envcheck.READ_ONLY}. What was queued stays " \
                        "queued, and files not taken yet wait in the watch folders"
                LOGGER.critical("stopping after a fatal fault: %s%s", self._fatal, on)
                return EXIT_FAILURE
            if self._stop:
                return EXIT_OK
            if self._reload:
                self._reload = False
                try:
                    self.reload()
                except Exception as exc:  # noqa: BLE001 - a reload never stops the daemon
                    self._reload_failed(f"{type(exc).__name__}: {exc}", exc_info=True)
            if not self._alive():
                LOGGER.critical("a worker thread or process died; stopping so the service restarts")
                return EXIT_FAILURE
            if self.keeper is not None and self.cfg is not None:
                self.keeper.tick(self.cfg.retention, (w.path for w in self.cfg.watch))
            if ping and self._progressing():
                notify.watchdog()
            self._watch_state()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY
                if self.cfg is not None and time.monotonic() < self._recheck_removed_until:
                    self._hold_removed(self.cfg)
                self._publish_status()

    def _progressing(self) -> bool:
        """Intake and every worker show a recent heartbeat; a stall is logged once."""
        stuck = [f"intake (no progress for {time.monotonic() - self.intake.beat:.0f}s)"] \
            if self.intake is not None and self.intake.stalled() else []
        for s in self.senders.values():
            stuck += s.wedged()
        if stuck and not self._stuck:
            LOGGER.error("no progress: %s; withholding the watchdog ping so the service is "
                         "restarted", ", ".join(stuck))
        self._stuck = bool(stuck)
        return not stuck

    def _parallel(self, jobs: Sequence[Callable[[], None]], name: str) -> None:
        """Run ``jobs`` at once in threads; keep pinging the watchdog while they run."""
        ping = notify.watchdog_interval()
        threads = [threading.Thread(target=j, name=name) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(ping or 1.0)
                if ping and t.is_alive():
                    notify.watchdog()

    def _watch_state(self) -> None:
        """Publish which watch folders are unavailable, and whether intake is paused on a
        full spool (``status``, STATUS=), on a change."""
        if self.published is None:
            return
        now = {n: w.unavailable for n, w in self.watchers.items() if w.unavailable}
        why = self.intake.paused_full if self.intake is not None else None
        if self.published.update(now, why, list(self.watchers)):
            self._publish_status()

    def _publish_status(self) -> None:
        """STATUS= with :meth:`_summary`, when it says something new."""
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
        gone = [n for n, w in self.watchers.items() if w.unavailable]
        if gone:
            text += f"; watch unavailable: {', '.join(gone)}"
        return text

    # --- reload ------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: validate the file first; a bad file keeps the running configuration."""
        assert self.cfg is not None and self.intake is not None and self.spool is not None
        notify.reloading()
        try:
            new = self._check(envcheck.load(self.config_path))
            if Path(new.spool).resolve() != Path(self.cfg.spool).resolve():
                raise ConfigError([config.ConfigIssue(self.config_path, None, "spool",
                                   "the spool cannot move while running; restart the "
                                   "service to use a new spool")])
        except ConfigError as exc:
            self._reload_failed("; ".join(str(i) for i in exc.issues))
            return
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, we keep running
            self._reload_failed(f"{self.config_path}: {type(exc).__name__}: {exc}",
                                exc_info=True)
            return
        old = self.cfg
        logs.setup(new.log.level, self.log_target or new.log.target, new.log.phi,
                   paths=new.log.paths)
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
        changed: list[Callable[[], None]] = []
        retuned: list[str] = []  # its peer's settings changed: they may be mended
        for name, dest in old.destinations.items():
            now = new.destinations.get(name)
            settings = now is None or now != dest or new.calling_ae(now) != old.calling_ae(dest)
            if settings or self._log(new) != self._log(old):
                changed.append(self.senders.pop(name).stop)
            if settings and now is not None:
                retuned.append(name)
        self._parallel(changed, "fwd-stop")  # each drains its C-STORE in flight at once
        self._hold_removed(new)
        # a batch intake took under the old file may still queue jobs for a removed one
        self._recheck_removed_until = time.monotonic() + RECHECK_REMOVED
        for name in retuned:  # a held or backed-off peer is tried with the new settings now
            was = self.spool.health(name)
            if was.state != "ok":
                _before, waiting = self.spool.resume(name)
                event(LOGGER, "reload", "%s: its settings changed; was %s (%s): "
                      "probing now, its %d pending job(s) are due", name, was.state,
                      was.reason, waiting, DESTINATION=name)
        for name in new.destinations:
            if name not in self.senders:
                self._start_sender(new, name)
        self.cfg = new
        event(LOGGER, "reload", "configuration reloaded from %s", self.config_path,
              CONFIG_FILE=self.config_path)
        notify.ready(self._summary())

    def _reload_failed(self, errors: str, exc_info: bool = False) -> None:
        event(LOGGER, "reload_failed", "reload refused, still running the previous "
              "configuration: %s", errors, level=logging.ERROR, CONFIG_FILE=self.config_path,
              ERRORS=errors)
        if exc_info:
            LOGGER.debug("the reload's traceback", exc_info=True)
        notify.ready(self._summary())

    # --- stop --------------------------------------------------------------------

    def _shutdown(self) -> None:
        for w in self.watchers.values():
            w.stop()
        if self.intake is not None:
            self.intake.stop()
        # every destination drains at once, within the stop timeout
        self._parallel([s.stop for s in self.senders.values()], "fwd-stop")
        if self.keeper is not None:
            self.keeper.join()
        if self.spool is not None:
            if self.cfg is not None:
                watchstate.clear(self.cfg.spool)
            self.spool.close()
        if self.lock is not None:
            self.lock.release()


def run(config_path: str, log_target: str | None = None) -> int:
    return Daemon(config_path, log_target).run()

