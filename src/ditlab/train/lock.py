"""One run per folder: a lock file, `<out>/.ditlab-run.lock`, naming the process that writes the run.

A run takes the lock before it writes anything into its folder and removes it when it ends (however it
ends, short of being killed). A second run pointed at the same folder (`ditlab train --out SAME`, resumed or
not) is refused with the owner's pid, host, start time and command line, so two runs can never interleave
their checkpoints, logs and retention.

A lock outlives its owner only when the owner was killed (SIGKILL, a crash, a lost machine). Then:
- written on this host and its process is gone (no such pid, or the pid now belongs to a process started
  later, or the machine rebooted since): stale, taken over at once with a note: a crashed run resumes with
  plain `--resume auto`;
- written on another host (a shared file system), or its process cannot be checked: this machine cannot tell
  whether that run still writes, so it is refused unless `--force`, which takes the lock over;
- a process this machine sees running is never taken over, not even with `--force`.

`--force` is about the lock only; `--overwrite` (moving a finished run's files aside) is about the files.
They combine: `--overwrite --force` starts a new run in a folder whose old lock came from another host.

The lock is created atomically with its content (a hard link of a finished temporary file), and a stale
lock is renamed aside before it is replaced, so two runs taking over the same stale lock at once cannot
both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
import warnings
from pathlib import Path

LOCK_NAME = ".ditlab-run.lock"


class RunLockedError(ValueError):
    """The run folder is locked by another run."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (Linux /proc), which a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces


def _this_process() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "token": secrets.token_hex(8),
    }


def _read(path: Path) -> dict | None:
    """The lock's record; None when there is no lock, {} when it cannot be read as one."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def owner_state(owner: dict) -> str:
    """ "running" (a process this machine sees), "gone" (provably ended) or "unknown" (cannot be checked)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return "unknown"
    boot = _boot_id()
    if boot and owner.get("boot_id") and boot != owner["boot_id"]:
        return "gone"  # written before this machine last booted
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # another user's process: it exists
    ticks = _start_ticks(owner["pid"])
    if ticks is not None and owner.get("start_ticks") is not None:
        return "running" if ticks == owner["start_ticks"] else "gone"  # else: the pid was reused
    return "unknown"


def refuse_if_running(out: str | os.PathLike) -> None:
    """Refuse at once a folder whose lock belongs to a process running here: called before a run even reads
    the folder's checkpoints (which the running owner may be pruning). Nothing is written."""
    path = Path(out) / LOCK_NAME
    owner = _read(path)
    if owner and owner_state(owner) == "running":
        raise RunLockedError(_running_message(Path(out), owner))


def _running_message(out: Path, owner: dict) -> str:
    return (
        f"{out} is in use by another run ({_describe(owner)}): two runs in one folder would mix their "
        f"checkpoints. Wait for it to end, stop it (kill {owner.get('pid')}), or pick another --out (--force "
        "never takes over a running process)"
    )


def _describe(owner: dict) -> str:
    if not owner:
        return "an unreadable lock"
    command = f", command: {owner['command']}" if owner.get("command") else ""
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}{command}"


def _create(path: Path, record: dict) -> bool:
    """Create the lock holding `record`, atomically; False if a lock is already there."""
    tmp = path.with_name(f"{path.name}.{record['token']}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    try:
        os.link(tmp, path)  # fails if the lock exists; never shows a half-written lock
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class RunLock:
    """The lock of one run folder, held by this process (see the module docstring)."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = path, record

    @classmethod
    def acquire(cls, out: str | os.PathLike, force: bool = False) -> RunLock:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path, mine = out / LOCK_NAME, _this_process()
        for _ in range(5):  # each retry follows a lock that vanished or changed hands meanwhile
            if _create(path, mine):
                return cls(path, mine)
            owner = _read(path)
            if owner is None:
                continue
            state = owner_state(owner)
            if state == "running":
                raise RunLockedError(_running_message(out, owner))
            if state == "unknown" and not force:
                raise RunLockedError(
                    f"{out} is locked by another run ({_describe(owner)}) that this machine cannot check. If that "
                    f"run has ended (or its machine is down), take the folder over with --force (it removes "
                    f"{path.name}); else pick another --out"
                )
            if cls._take_over(path, owner):
                why = "its process is gone" if state == "gone" else "--force"
                warnings.warn(f"took over the lock of {out} from {_describe(owner)} ({why})", stacklevel=2)
        raise RunLockedError(f"could not lock {out}: other runs keep taking it; pick another --out")

    @staticmethod
    def _take_over(path: Path, owner: dict) -> bool:
        """Remove the stale lock `owner`; False if another process replaced it meanwhile (theirs stays)."""
        aside = path.with_name(f"{path.name}.{secrets.token_hex(8)}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False  # another run took it over first
        if _read(aside) != owner:  # it was a fresh lock by now: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True  # free to create on the next round

    def release(self) -> None:
        """Remove the lock if it is still this process's (a --force takeover elsewhere leaves theirs alone)."""
        if (_read(self.path) or {}).get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "owner_state", "refuse_if_running"]
