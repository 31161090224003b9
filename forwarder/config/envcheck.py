"""What the configuration needs from the machine, checked as the user who runs the check.

`check-config` and the daemon's start both call :func:`check`: under systemd they run as
the service user inside the unit's sandbox, so "writable" here means writable for the
daemon. Each finding is a :class:`ConfigIssue` (``FILE:LINE: key.path: message``) saying
what is wrong with which path and how to fix it.

Errors are what no restart can fix: the spool cannot be created or written (or is on a
network or kernel file system), a secret, key, certificate or CA file is missing or
unreadable, a DER key cannot be converted (folders that overlap each other or the spool
are refused earlier, by the configuration's cross-checks). Warnings leave the daemon
running: a watch folder that does not exist yet is watched once it appears; one the
daemon cannot write into is read, its files sent once, left in place and remembered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from forwarder.asconfig import Profile, ProfileError, ProfileFileError, read_profile_file
from forwarder.ciphers import LOWERED, for_openssl
from forwarder.config import loader
from forwarder.config.engine import Ctx, KeyPath
from forwarder.config.schema import Config, NegotiationProfile
from forwarder.config.yamlsrc import YamlProblem, load_with_lines
from forwarder.errors import ConfigError, ConfigIssue
from forwarder.identity import empty_token
from forwarder.spool.durable import filesystem_type, nearest_folder, unusable_fs
from forwarder.tls import DER_INSTALL, cipher_problem

# what the daemon writes in the spool directory
SPOOL_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "daemon.lock")
SPOOL_DIRS = ("objects", "quarantine", "tmp")


@dataclass
class Findings:
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)  # destination -> as read


def with_profiles(cfg: Config, found: Findings) -> Config:
    """``cfg`` whose destinations hold the negotiation profiles :func:`check` read."""
    dests = dict(cfg.destinations)
    for name, profile in found.profiles.items():
        dests[name] = dataclasses.replace(
            dests[name], proposal=tuple(profile.contexts),
            roles=tuple((sop, scu, scp) for sop, (scu, scp) in profile.roles.items()))
    return dataclasses.replace(cfg, destinations=dests)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def load(path: str) -> Config:
    """:func:`loader.load`, with the fix spelled out when the file exists but this user
    cannot read it (the service reads it as its own user)."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise ConfigError([ConfigIssue(path, None, "", (
            f"cannot read: {exc.strerror} (as user {_user()}); make it readable by the "
            f"service's group: chgrp dicom-forwarder {path} && chmod 640 {path}"))]) from exc
    except OSError:
        pass  # loader.load says what is wrong
    return loader.load(path)


class _Checker:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.file = cfg.source or "<config>"
        self.found = Findings()
        self.user = _user()
        try:
            _, lines, _ = load_with_lines(Path(self.file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, YamlProblem):
            lines = {}
        self.where = Ctx(self.file, lines)  # the file's key lines, as the loader names them

    def issue(self, path: KeyPath, message: str, error: bool = True) -> None:
        item = self.where.issue(path, message)
        (self.found.errors if error else self.found.warnings).append(item)

    # --- the spool ---------------------------------------------------------------

    def spool(self) -> None:
        raw = self.cfg.spool
        spool = Path(raw)
        shown = raw if spool.is_absolute() else f"{raw} (= {spool.absolute()}, relative " \
            f"to the current directory; use an absolute path)"
        there = nearest_folder(spool.absolute())  # the spool, or where it would be made
        why = unusable_fs(filesystem_type(there))
        if why:
            self.issue(("spool",), f"{shown} is {why}")
            return
        if spool.exists():
            if not spool.is_dir():
                self.issue(("spool",), f"{shown} is not a directory")
                return
            # the mount refuses, whoever owns it (access() does not see an emergency one)
            if read_only(spool):
                self.issue(("spool",), f"{shown} is on a {READ_ONLY}")
                return
            if not os.access(spool, os.W_OK | os.X_OK):
                self.issue(("spool",), f"{shown} is not writable by user {self.user}: "
                           f"chown -R {self.user} {spool.absolute()}, or "
                           "under systemd use the unit's StateDirectory= "
                           "(/var/lib/dicom-forwarder) or add it to ReadWritePaths=")
                return
            # e.g. left by a run as root: the daemon could open none of them
            needs = {**dict.fromkeys(SPOOL_FILES, os.R_OK | os.W_OK),
                     **dict.fromkeys(SPOOL_DIRS, os.W_OK | os.X_OK)}
            bad = [str(spool / n) for n, mode in needs.items()
                   if os.path.lexists(spool / n) and not os.access(spool / n, mode)]
            if bad:
                self.issue(("spool",), f"{', '.join(bad)} cannot be written by user "
                           f"{self.user}: chown -R {self.user}: {spool.absolute()}")
            return
        if read_only(there):
            self.issue(("spool",), f"{shown} does not exist and cannot be created: {there} "
                       f"is on a {READ_ONLY}; under systemd the unit's StateDirectory= "
                       "(/var/lib/dicom-forwarder) is made at start, where the unit lets "
                       "it be written")
            return
        if not os.access(there, os.W_OK | os.X_OK):
            self.issue(("spool",), f"{shown} does not exist and user {self.user} cannot "
                       f"create it ({there} is not writable): create it "
                       f"(install -d -o {self.user} -m 750 {spool.absolute()}); under "
                       "systemd the unit's StateDirectory= (/var/lib/dicom-forwarder, or "
                       "/var/lib/dicom-forwarder-NAME for dicom-forwarder@NAME) is made at "
                       "start")

    # --- watch folders -----------------------------------------------------------

    def watch(self) -> None:
        for i, w in enumerate(self.cfg.watch):
            at = ("watch", i, "path")
            path = Path(w.path)
            if not path.exists():
                self.issue(at, f"{w.path} does not exist yet; it is watched once it appears "
                           f"(create it: install -d -g {self.user} -m 2770 {path.absolute()})",
                           error=False)
                continue
            if not path.is_dir():
                self.issue(at, f"{w.path} is not a directory")
                continue
            if not os.access(path, os.R_OK | os.X_OK):
                self.issue(at, f"{w.path} is not readable by user {self.user}"
                           f"{read_only(path, probe=False)}: "
                           "its files cannot be taken; give the service's group read access",
                           error=False)
            elif not w.keep_source and not os.access(path, os.W_OK | os.X_OK):
                self.issue(at, f"{w.path} is not writable by user {self.user}"
                           f"{read_only(path, probe=False)}: "
                           "files are sent once and left in place; to have them removed give "
                           "the service's group write access (chmod g+w) and, under systemd, "
                           "list the folder in ReadWritePaths=", error=False)

    # --- routes ------------------------------------------------------------------

    def routes(self) -> None:
        """Warnings for routing that sends nothing: the file is valid, but every file, or
        every file meant for a destination, would go nowhere."""
        if self.cfg.watch and not self.cfg.routes:
            fate = "deleted" if self.cfg.unrouted == "delete" else "quarantined"
            self.issue(("routes",), f"no route: every file taken is unrouted and {fate} "
                       f"(unrouted: {self.cfg.unrouted}); add a route such as "
                       "'- to: [NAME]' to send everything to a destination", error=False)
            return
        used = {d for r in self.cfg.routes for d in r.to}
        for name in self.cfg.destinations:
            if name not in used:
                self.issue(("destinations", name), f"'{name}' is in no route: nothing is "
                           "sent to it (jobs already in the spool for it still are)",
                           error=False)

    # --- secrets, keys, certificates -----------------------------------------------

    def files(self) -> None:
        for name, dest in self.cfg.destinations.items():
            base: KeyPath = ("destinations", name)
            tls = dest.tls
            if tls.enabled:
                for key in ("cert", "key", "key_password_file"):
                    self._readable((*base, "tls", key), getattr(tls, key))
                for i, ca in enumerate(tls.ca):
                    self._readable((*base, "tls", "ca", i), ca)
                if tls.ca_dir:
                    self._readable((*base, "tls", "ca_dir"), tls.ca_dir, directory=True)
                if tls.der and tls.cert and importlib.util.find_spec("cryptography") is None:
                    self.issue((*base, "tls", "der"), "a DER private key is converted with the "
                               "'cryptography' package, which this installation lacks: "
                               f"install it into the service's virtualenv ({DER_INSTALL}) "
                               "or give the key as PEM")
                ciphers = for_openssl(tls.ciphers)
                unusable = cipher_problem(tls.profile, ciphers)
                if unusable:
                    self.issue((*base, "tls", unusable[0]), unusable[1])
                elif LOWERED in ciphers:
                    self.issue((*base, "tls", "ciphers"), "NULL or 3DES suites are asked for, "
                               "so OpenSSL's security level is lowered for the whole "
                               "connection: the peer's weak keys (RSA under 1024 bits) and "
                               "SHA-1 signatures are accepted too", error=False)
            ident = dest.identity
            for key in ("password_file", "kerberos_file", "saml_file", "jwt_file"):
                self._readable((*base, "identity", key), getattr(ident, key))
            for kind, key in ((3, "kerberos_file"), (4, "saml_file"), (5, "jwt_file")):
                self._not_empty((*base, "identity", key), getattr(ident, key), kind)
            if dest.negotiation_profile is not None:
                self._profile(name, (*base, "negotiation_profile"), dest.negotiation_profile)

    def _profile(self, name: str, at: KeyPath, given: NegotiationProfile) -> None:
        """The profile file read, its profile found (and kept for the daemon)."""
        try:
            found = read_profile_file(given.file, given.profile)
        except OSError:
            self._readable((*at, "file"), given.file)  # says why
            return
        except ProfileError as exc:
            self.issue((*at, "file" if isinstance(exc, ProfileFileError) else "profile"),
                       f"{exc}")
            return
        self.found.profiles[name] = found
        for entry in found.skipped:
            self.issue((*at, "file"), f"{entry}: not read (DCMTK reads the keys numbered 1, "
                       "2, 3... up to the first number missing)", error=False)

    def _not_empty(self, at: KeyPath, value: str | None, kind: int) -> None:
        """A token file that is there but empty (truncated, or not written yet)."""
        with contextlib.suppress(OSError):  # not there: _readable said so
            if value and os.stat(value).st_size == 0:
                self.issue(at, f"{empty_token(value, kind)}; write it, or remove the key")

    def _readable(self, at: KeyPath, value: str | None, directory: bool = False) -> None:
        if not value:
            return
        path = Path(value)
        try:
            if directory:
                os.listdir(path)
            else:
                with open(path, "rb"):
                    pass
        except FileNotFoundError:
            self.issue(at, f"{value} does not exist (as seen by user {self.user}); put the "
                       "file there or correct the path")
        except IsADirectoryError:
            self.issue(at, f"{value} is a folder, not a file: give the file's path")
        except OSError as exc:
            self.issue(at, f"{value} is not readable by user {self.user}: {exc.strerror}; "
                       f"make it readable by the service's group (chgrp dicom-forwarder "
                       f"{value} && chmod 640 {value})")


READ_ONLY = ("read-only file system here: if the service's unit makes it so "
             "(ProtectSystem=), list the path in ReadWritePaths=; if the mount itself is "
             "read-only (the kernel remounts a file system read-only after an error: see "
             "dmesg), check and repair it, then remount it read-write")


def read_only(path: str | os.PathLike[str], probe: bool = True) -> str:
    """' (read-only file system ...)' when the mount, not the permissions, refuses writes:
    mounted so, or (``probe``) a file system that stopped writing after an error while it
    still shows itself read-write (ext4's emergency read-only), found by asking for a
    nameless file in the folder, which leaves nothing behind (but inotify sees it opened:
    not in a watch folder)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f" ({READ_ONLY})"
        if probe:
            os.close(os.open(path, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        return f" ({READ_ONLY})" if exc.errno == errno.EROFS else ""
    return ""


def check(cfg: Config) -> Findings:
    """Every environment finding for ``cfg``, as the current user."""
    c = _Checker(cfg)
    c.spool()
    c.watch()
    c.routes()
    c.files()
    return c.found
