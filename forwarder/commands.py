"""The operator commands behind `dicom-forwarder`: each takes parsed args, returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from forwarder import config, watchstate
from forwarder.config import envcheck
from forwarder.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ConfigError,
    ForwarderError,
    SpoolIndexError,
    UsageError,
)

if TYPE_CHECKING:
    from forwarder.spool import Spool


def cmd_check_config(args: argparse.Namespace) -> int:
    """The file, then what it needs from this machine as the user running the check."""
    cfg = envcheck.load(args.config)
    found = envcheck.check(cfg)
    for issue in found.warnings:
        print(f"warning: {issue}", file=sys.stderr)
    if found.errors:
        raise ConfigError(found.errors)
    print(f"{args.config}: ok ({len(cfg.watch)} watch folders, {len(cfg.destinations)} "
          f"destinations, {len(cfg.routes)} routes"
          f"{f', {len(found.warnings)} warning(s)' if found.warnings else ''})", file=sys.stderr)
    return EXIT_OK


def _open_spool(args: argparse.Namespace, readonly: bool = False,  # noqa: ANN202
                destination: str | None = None):
    """The configuration and its spool; ``readonly`` for the commands that only look.
    ``destination``, when given, must be configured (checked before the spool opens)."""
    cfg = config.load(args.config)
    if destination is not None and destination not in cfg.destinations:
        raise UsageError(f"no destination named '{destination}' in {args.config} "
                         f"(defined: {', '.join(cfg.destinations)})")
    return cfg, _spool_at(cfg.spool, readonly)


def _spool_at(path: str, readonly: bool) -> Spool:
    """The spool at ``path``, never created here; objects without an index: exit 78."""
    from forwarder.errors import SpoolError
    from forwarder.spool import Spool, db

    db.check_before_open(Path(path))
    if not readonly and not (Path(path) / "index.sqlite").is_file():
        raise SpoolError(f"no spool at {path}: check the configuration's 'spool' path; "
                         "nothing was created")
    return Spool(path, readonly=readonly)


def _to_look(args: argparse.Namespace) -> tuple[config.Config, Spool, ConfigError | None]:
    """The configuration and its spool, read-only, for the commands that only look. A
    file with errors elsewhere still names its spool: the queue is shown with a bare
    configuration (no watch folders, no destinations), and the errors with it, so the
    operator sees both while mending the file."""
    bad: ConfigError | None = None
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        if exc.spool is None:
            raise
        cfg, bad = config.Config(source=str(args.config), spool=exc.spool), exc
    try:
        return cfg, _spool_at(cfg.spool, readonly=True), bad
    except SpoolIndexError:  # a damaged or lost index: with errors, both must be mended
        if bad is not None:
            _say_issues(bad)
        raise
    except ForwarderError:
        if bad is None:
            raise
        raise bad from None  # no spool there to show: the file's errors come first


def _looked(bad: ConfigError | None, spool: str) -> int:
    """The exit code of a command that only looks: 78 when the file had errors, which
    are printed after what was shown, with what they mean."""
    if bad is None:
        return EXIT_OK
    _say_issues(bad)
    print(f"dicom-forwarder: the configuration has errors (above); shown is the spool it "
          f"names, {spool}. A running daemon keeps the configuration it runs with until "
          "the file is mended and reloaded; a restart would be refused. Check it with "
          "'dicom-forwarder check-config -c FILE'.", file=sys.stderr)
    return bad.exit_code


def _say_issues(bad: ConfigError) -> None:
    for issue in bad.issues:
        print(str(issue), file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from forwarder import spoollock
    from forwarder.spool import RESERVE, room

    cfg, spool, bad = _to_look(args)
    with spool:
        report = spool.status(cfg.destinations if bad is None else spool.destination_names())
        last = spool.last_success()
    holder = spoollock.holder(cfg.spool)
    report["daemon"] = None if holder is None else {
        "pid": holder.get("pid"), "version": holder.get("version"),
        "config": holder.get("config"), "started_at": holder.get("started_at"),
        "uptime_s": round(time.time() - holder["started_at"], 3)
        if isinstance(holder.get("started_at"), (int, float)) else None}
    for name, row in report["destinations"].items():
        row["last_success_at"] = last.get(name)
        if holder is None:  # a killed daemon's claims: waiting, and pending from its start
            row["pending"], row["sending"] = row["pending"] + row["sending"], 0
    # the running daemon's view; one killed leaves its last view behind: not believed
    seen = watchstate.read(cfg.spool) if holder is not None else {}
    full = watchstate.full(cfg.spool, RESERVE) if holder is not None else None
    if full is not None:  # said now: the daemon cannot rewrite its view on a full disk
        jobs = {k: sum(r[k] for r in report["destinations"].values())
                for k in ("pending", "sending", "failed")}
        full = f"{full}; {room.what_frees_space(jobs)}"
        seen = {n: {**w, "reason": full} if w.get("state") == "paused" else w
                for n, w in seen.items()}
    ok = {"state": "ok", "reason": None} if full is None else {"state": "paused",
                                                               "reason": full}
    names = [w.name for w in cfg.watch] if bad is None else sorted(seen)
    report["watch"] = {name: seen.get(name, ok) for name in names}
    if args.json:
        print(json.dumps(report, indent=2))
        return _looked(bad, cfg.spool)
    d = report["daemon"]
    if d is None:
        print(f"daemon: not running on {cfg.spool}")
    else:
        up = "?" if d["uptime_s"] is None else _age(d["uptime_s"])
        print(f"daemon: running, pid {d['pid']}, up {up}, version {d['version']}, "
              f"spool {cfg.spool}")
    head = ("destination", "state", "pending", "sending", "done", "failed", "oldest",
            "last success", "last error")
    rows = [head]
    for name, r in report["destinations"].items():
        oldest = "-" if r["oldest_pending_s"] is None else _age(r["oldest_pending_s"])
        success = "-" if r["last_success_at"] is None else \
            _age(max(time.time() - r["last_success_at"], 0)) + " ago"
        error = r["last_error"] or "-"
        if len(error) > 60:  # whole in status --json and in 'failed'
            error = error[:57] + "..."  # ASCII: any locale can print it
        rows.append((name, r["state"], str(r["pending"]), str(r["sending"]), str(r["done"]),
                     str(r["failed"]), oldest, success, error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    print(f"quarantined: {report['quarantined']}")
    for name, w in report["watch"].items():
        if w["state"] != "ok":
            print(f"watch {name}: {w['state']}: {w['reason']}")
    return _looked(bad, cfg.spool)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.all_failed and not args.destination:
        raise UsageError("say which failed jobs to requeue: --destination NAME or --all-failed")
    cfg, spool = _open_spool(args, destination=args.destination)
    with spool:
        n = spool.requeue_failed([args.destination] if args.destination else
                                 list(cfg.destinations))
        removed = {name: row["failed"] for name, row in spool.status(())["destinations"].items()
                   if name not in cfg.destinations and row["failed"]}
    print(f"requeued {n} failed job(s)")
    for name, left in sorted(removed.items()):  # nothing would ever send them
        print(f"left {left} failed job(s) of {name}, a destination the configuration no "
              f"longer has: 'dicom-forwarder purge --removed-destination {name}' deletes "
              "them")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Probe a held or backed-off destination at once and make its waiting jobs due now;
    the running daemon notices within a second (the spool is the flag)."""
    _cfg, spool = _open_spool(args, destination=args.name)
    with spool:
        before, waiting = spool.resume(args.name)
    if before.state == "ok":  # nothing to probe: the daemon is sending to it
        print(f"{args.name}: ok, nothing to probe; its {waiting} pending job(s) are due now")
        return EXIT_OK
    was = before.state + (f" ({before.reason})" if before.reason else "")
    print(f"{args.name}: was {was}; probing now; its {waiting} pending job(s) are due now")
    return EXIT_OK


def _listing(args: argparse.Namespace, query: Callable[[Spool], list[dict]], line: str,
             summary: str) -> int:
    """Spool rows (``query`` on the spool, opened read-only) as JSON (``--json``) or one
    formatted line each and a summary."""
    cfg, spool, bad = _to_look(args)
    with spool:
        rows = query(spool)
    if args.json:
        print(json.dumps(rows, indent=2))
        return _looked(bad, cfg.spool)
    for r in rows:
        print(line.format(**r))
    print(summary.format(n=len(rows)))
    return _looked(bad, cfg.spool)


def cmd_failed(args: argparse.Namespace) -> int:
    return _listing(args, lambda spool: spool.failed_jobs(),
                    "job {job} -> {destination}: {sop_instance_uid} ({attempts} attempts): "
                    "{reason}", "{n} failed job(s); requeue with 'dicom-forwarder retry'")


def cmd_quarantine(args: argparse.Namespace) -> int:
    return _listing(args, lambda spool: spool.quarantined(), "{file}: from {source}: {reason}",
                    "{n} quarantined file(s)")


def cmd_spool(args: argparse.Namespace) -> int:
    """``spool rebuild``: a new index from the objects the spool holds."""
    from forwarder import spoollock
    from forwarder.spool import rebuild

    cfg = config.load(args.config)
    rebuild.require_spool(Path(cfg.spool))  # before the lock: no lock file in a non-spool
    running = spoollock.holder(cfg.spool)
    if running is not None:
        what = "a daemon" if running.get("command", "run") == "run" else \
            f"another {running['command']}"
        raise UsageError(f"{what} (pid {running.get('pid', '?')}) is running on the spool "
                         f"{cfg.spool}: stop it first (systemctl stop dicom-forwarder)")
    # held throughout (a daemon started meanwhile is refused: it would take the objects
    # not yet indexed for orphans)
    lock = spoollock.SpoolLock(cfg.spool).acquire(args.config, command="spool rebuild")
    try:
        report = rebuild.rebuild(cfg, force=args.force)
    finally:
        lock.release()
    print(f"spool {cfg.spool} rebuilt: {report['queued']} object(s) queued again, "
          f"{report['quarantined']} quarantined, {report['quarantine_listed']} quarantine "
          f"record(s) listed again, {report['moved_aside']} old index file(s) moved aside")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete failed jobs and quarantined files older than the ages given."""
    from forwarder.spool import retention

    ages = {}
    for key in ("failed_older_than", "quarantine_older_than"):
        value = getattr(args, key)
        if value is not None:
            try:
                ages[key] = config.parse_duration(value)
            except Exception as exc:  # noqa: BLE001 - the parser's message says what is wrong
                raise UsageError(f"--{key.replace('_', '-')}: {exc}") from exc
    removed = args.removed_destination
    if not ages and removed is None:
        raise UsageError("say what to purge: --failed-older-than AGE, "
                         "--quarantine-older-than AGE and/or --removed-destination NAME")
    cfg, spool = _open_spool(args)
    if removed is not None and removed in cfg.destinations:
        raise UsageError(f"'{removed}' is a destination in {args.config}: its jobs are "
                         "delivered there; remove it from the configuration first (and "
                         "reload); --failed-older-than purges the failed jobs of every "
                         "destination")
    verb = "would delete" if args.dry_run else "deleted"
    with spool:
        if removed is not None:
            # the spool first: a name it holds no job for is that, daemon or none
            n = retention.purge_destination(spool, removed, dry_run=True)
            if n is not None:
                _not_sent_to(cfg, spool, removed)
                n = retention.purge_destination(spool, removed, dry_run=args.dry_run)
            if n is None:
                named = sorted(set(spool.status(())["destinations"]) - set(cfg.destinations))
                raise UsageError(f"the spool holds no job for '{removed}' (removed "
                                 f"destinations with jobs: {', '.join(named) or 'none'})")
            print(f"{verb} the jobs of removed destination {removed}: {n} not delivered")
        if "failed_older_than" in ages:
            n = retention.purge_failed(spool, ages["failed_older_than"], dry_run=args.dry_run)
            print(f"{verb} {n} failed job(s) older than {args.failed_older_than}")
        if "quarantine_older_than" in ages:
            n = retention.purge_quarantine(spool, ages["quarantine_older_than"],
                                           dry_run=args.dry_run)
            print(f"{verb} {n} quarantined file(s) older than {args.quarantine_older_than}")
        if not args.dry_run:
            retention.prune_bookkeeping(spool, watched=(w.path for w in cfg.watch))
    return EXIT_OK


def _not_sent_to(cfg: config.Config, spool: Spool, name: str) -> None:
    """A running daemon still sends to ``name`` unless it holds it as removed: the file
    on disk may say otherwise before it is reloaded."""
    from forwarder import spoollock
    from forwarder.spool.health import REMOVED

    running = spoollock.holder(cfg.spool)
    health = spool.health(name)
    if running is not None and (health.state, health.reason) != ("held", REMOVED):
        raise UsageError(f"the daemon (pid {running.get('pid', '?')}) running on "
                         f"{cfg.spool} still sends to '{name}': reload it with the "
                         "destination removed (systemctl reload dicom-forwarder), then "
                         "purge")


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO each named destination (all by default) with its full settings."""
    import time

    from forwarder import runtime
    from forwarder.association import AssociationFailed, echo
    from forwarder.peers import peer_for

    runtime.setup()
    cfg = config.load(args.config)
    names = args.names or list(cfg.destinations)
    unknown = [n for n in names if n not in cfg.destinations]
    if unknown:
        raise UsageError(f"no destination named {', '.join(unknown)} in {args.config} "
                         f"(defined: {', '.join(cfg.destinations)})")
    failed = 0
    for name in names:
        dest = cfg.destinations[name]
        where = f"{dest.called_ae_title}@{dest.peer}"
        start = time.monotonic()
        try:
            answer = echo(peer_for(dest, cfg.calling_ae(dest)))
        except AssociationFailed as exc:
            failed += 1
            print(f"{name}: failed: {exc}")
            continue
        except (OSError, ValueError) as exc:
            failed += 1
            print(f"{name}: failed: {where}: {exc}")
            continue
        print(f"{name}: ok ({answer} from {where} in {(time.monotonic() - start) * 1000:.0f} ms)")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from forwarder import daemon

    return daemon.run(args.config, args.log_target)


def cmd_receive(args: argparse.Namespace) -> int:
    from forwarder import receive

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
    return receive.run(args.output, args.port, args.aet, args.bind)
