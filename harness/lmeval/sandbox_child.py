"""Inside of the code sandbox: confine this process, run one program, then prove that its tests ran to the end.

harness.lmeval.scoring starts it as ``python -I -S sandbox_child.py SETTINGS`` in a session of its own, in a fresh
directory, with a scrubbed environment. Standard library only: the interpreter it runs in must not import the
harness. Each protection is tried on its own and skipped where the platform refuses it; ``--probe`` prints which
ones took (the harness records that in the cell's protocol).

The proof of completion is a nonce that the parent sends on stdin, read here before the program starts and written
to a pipe of its own only after the program returned. A program that exits early (``SystemExit``, ``os._exit``, a
signal) never writes it, and writing to the pipe without knowing the nonce proves nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import runpy
import signal
import site
import stat
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
# Where any user may write: each becomes a small private tmpfs, gone when the sandbox ends.
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
TMPFS_SIZE = "size=64m"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _mount(source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None) -> bool:
    source, target, fstype, options = (s.encode() if s is not None else None for s in (source, target, fstype, options))
    return _libc.mount(source, target, fstype, flags, options) == 0


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _private_tmp(workdir: str) -> bool:
    """A mount namespace whose world-writable folders (and the sandbox's own) are fresh size-capped tmpfs."""
    if not (_unshare(CLONE_NEWNS) and _mount(None, "/", None, MS_REC | MS_PRIVATE)):
        return False
    with open(os.path.join(workdir, "program.py"), "rb") as f:
        program = f.read()
    for folder in sorted({os.path.dirname(workdir), *WRITABLE_DIRS}):
        if os.path.isdir(folder) and not _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV,
                                                f"{TMPFS_SIZE},mode=1777"):
            return False
    os.makedirs(workdir)
    with open(os.path.join(workdir, "program.py"), "wb") as f:
        f.write(program)
    os.chdir(workdir)
    return True


def _expose(path: str) -> bool:
    """Make ``path`` reachable by any user (the interpreter under /root, say): the top-most folder on the way that
    others may not enter is covered by a bare tmpfs holding only the way on, which also hides the rest of it."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    for depth in range(len(parts) - 1):
        folder = os.sep + os.path.join(*parts[:depth]) if depth else os.sep
        if os.stat(folder).st_mode & stat.S_IXOTH:
            continue
        inner, hold = os.path.join(folder, parts[depth]), "/tmp/.sandbox_hold"
        os.makedirs(hold, exist_ok=True)
        ok = (_mount(inner, hold, None, MS_BIND | MS_REC)
              and _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755"))
        if ok:
            os.mkdir(inner)
            ok = _mount(hold, inner, None, MS_MOVE)
            os.rmdir(hold)
        return ok and _expose(path)
    return True


def confine(settings: dict) -> dict:
    """Everything this root-or-not process can do before the fork: namespaces and the file system view."""
    workdir, uid = settings["workdir"], settings["uid"]
    active = {"network": not _unshare(CLONE_NEWNET), "ipc_namespace": _unshare(CLONE_NEWIPC),
              "private_tmp": _private_tmp(workdir)}
    # A user of its own (unique per run) is what bounds processes and keeps it out of the harness's files; it
    # needs root, and the interpreter must stay readable for that user.
    interpreter = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    active["own_user"] = uid is not None and active["private_tmp"] and all(_expose(p) for p in interpreter)
    if active["own_user"]:
        os.chown(workdir, uid, uid)
        os.chown(os.path.join(workdir, "program.py"), uid, uid)
    active["pid_namespace"] = _unshare(CLONE_NEWPID)
    return active


def limit(settings: dict, active: dict) -> None:
    """Resource limits and the unprivileged user, in the process that will run the program."""
    limits = settings["limits"]
    for name, value in [(resource.RLIMIT_AS, limits["memory_bytes"]), (resource.RLIMIT_FSIZE, limits["file_bytes"]),
                        (resource.RLIMIT_NPROC, limits["processes"]), (resource.RLIMIT_NOFILE, limits["open_files"]),
                        (resource.RLIMIT_CPU, limits["cpu_seconds"]), (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(name, (value, value))
    if active["own_user"]:
        os.setgroups([])
        os.setgid(settings["uid"])
        os.setuid(settings["uid"])
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the uid change cleared it


def run(settings: dict) -> None:
    """Read the nonce, run the program as ``__main__``, and write the nonce only once it returned."""
    nonce = sys.stdin.buffer.read()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    path = os.path.join(settings["workdir"], "program.py")
    sys.argv = [path]
    sys.path += site.getsitepackages()  # started with -S: the packages, without their start-up hooks,
    site.setquit()  # and the builtins exit() and quit()
    runpy.run_path(path, run_name="__main__")
    os.write(settings["marker_fd"], nonce)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing the program left behind (threads, atexit hooks) may run after the proof


def main() -> None:
    probe = sys.argv[1] == "--probe"
    settings = json.loads(sys.argv[-1])
    active = confine(settings)
    if probe:
        print(json.dumps(active))
        return
    if active["pid_namespace"]:
        # The child is the namespace's init: when it ends, the kernel ends everything it left behind.
        child = os.fork()
        if child:
            os.close(settings["marker_fd"])
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if active["private_tmp"]:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # the harness's processes vanish
    limit(settings, active)
    run(settings)


if __name__ == "__main__":
    main()
