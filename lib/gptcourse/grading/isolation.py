"""Operating-system fences around learner code: resource limits, hidden paths, another uid.

Each function is applied in a freshly forked (or started) process before learner code
runs. What can be applied depends on the platform and on who runs the grader:

* resource limits (memory, CPU time, file size, processes) work on every Unix, except
  that macOS ignores the address-space limit;
* hiding paths (a private mount namespace with empty file systems mounted over the
  solutions, the gradebook and the submissions) and cutting the network (a new network
  namespace) need Linux and root;
* running as another uid, so that learner code can neither write the instructor's files
  nor signal the grader, needs root.

:func:`capabilities` says which fences are available; the grader logs what is missing.
"""

import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import select
import signal
import stat
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Sandbox processes run as uid BASE_UID + worker, ids no account uses, so that killing
# "every process of this uid" after a job cannot touch anyone else's processes.
BASE_UID = 1_000_000
# nbgrader's kernel of worker w runs as BASE_UID + AUTOGRADE_UID_OFFSET + w.
AUTOGRADE_UID_OFFSET = 1000

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Resource limits for one learner process (and each process it starts)."""

    memory_bytes: int = 4 * GIB      # address space: a 6 GiB allocation fails
    cpu_seconds: int = 120           # CPU time; the wall-clock bound is enforced outside
    file_bytes: int = 64 * MIB       # largest file the process may write
    processes: int = 64              # processes and threads of the sandbox uid


@dataclass(frozen=True)
class Capabilities:
    limits: bool
    namespaces: bool
    other_uid: bool
    why_not_uid: str = ""

    def describe(self) -> str:
        parts = ["resource limits" + ("" if self.limits else " (unavailable)")]
        parts.append("hidden paths and no network" if self.namespaces
                     else "NO hidden paths (needs Linux and root)")
        if self.other_uid:
            parts.append("a separate uid")
        elif self.namespaces:
            parts.append(f"root without capabilities instead of a separate uid "
                         f"({self.why_not_uid})")
        else:
            parts.append(f"NO separate uid ({self.why_not_uid}): learner code runs as you")
        return ", ".join(parts)


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def _unreadable_python() -> str | None:
    """The first folder of this Python installation other users cannot enter, if any."""
    import sysconfig

    for path in {sysconfig.get_path("stdlib"), sysconfig.get_path("purelib"),
                 os.path.dirname(os.path.realpath(sys.executable))}:
        current = os.path.realpath(path)
        while True:
            try:
                if not os.stat(current).st_mode & 0o001:
                    return current
            except OSError:
                return current
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return None


def capabilities() -> Capabilities:
    """Which fences this process can apply to its children."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    linux = sys.platform.startswith("linux")
    blocked = _unreadable_python() if root else None
    why = ("needs root" if not root else
           f"other users cannot enter {blocked}, which holds this Python" if blocked else "")
    return Capabilities(limits=hasattr(resource, "RLIMIT_CPU"),
                        namespaces=linux and root and _libc() is not None,
                        other_uid=root and blocked is None, why_not_uid=why)


def _set(which: str, value: int, slack: int = 0) -> None:
    kind = getattr(resource, which, None)
    if kind is None:
        return
    try:
        _, hard = resource.getrlimit(kind)
        new_hard = value + slack
        if hard != resource.RLIM_INFINITY:
            value, new_hard = min(value, hard), min(new_hard, hard)
        resource.setrlimit(kind, (value, new_hard))
    except (ValueError, OSError) as exc:  # macOS refuses some limits; say so, go on
        log.debug("could not set %s: %s", which, exc)


def apply_limits(limits: Limits, processes: bool = True) -> None:
    """Limit this process (inherited by its children). ``processes`` only with another uid:
    the process limit counts every process of the uid, the instructor's own included."""
    _set("RLIMIT_AS", limits.memory_bytes)
    # SIGXCPU at the soft limit says why the process ended; SIGKILL 2 s later if ignored.
    _set("RLIMIT_CPU", limits.cpu_seconds, slack=2)
    _set("RLIMIT_FSIZE", limits.file_bytes)
    _set("RLIMIT_CORE", 0)
    if processes:
        _set("RLIMIT_NPROC", limits.processes)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None):
    libc = _libc()
    result = libc.mount(source.encode() if source else None, target.encode(),
                        fstype.encode() if fstype else None, flags,
                        data.encode() if data else None)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def protected_paths(course_root: str | None = None) -> list[str]:
    """Folders learner code must not modify: the course, this Python and its packages."""
    import sysconfig

    import gptcourse

    # The folder above the package's: the clone of the course for an editable install.
    library_root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(gptcourse.__file__))))
    paths = {sys.prefix, sys.base_prefix, sysconfig.get_path("purelib"),
             sysconfig.get_path("stdlib"), library_root}
    if course_root:
        paths.add(course_root)
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


def enter_namespaces(hide: list[str], network: bool = False,
                     readonly: list[str] = ()) -> None:
    """Move into a private mount namespace (and, unless ``network``, an empty network
    namespace), make every folder in ``readonly`` read-only and cover every path in
    ``hide`` with an empty read-only file system."""
    libc = _libc()
    flags = _CLONE_NEWNS | (0 if network else _CLONE_NEWNET)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")

    # Mounts made from here on stay inside this process's namespace.
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE, None)

    for path in readonly:
        # A bind mount of a folder onto itself can then be remounted read-only.
        _mount(path, path, None, _MS_BIND | _MS_REC, None)
        _mount("none", path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)

    empty = None
    for path in hide:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
        else:
            # An empty, read-only regular file stands in for a file (the gradebook); not
            # /dev/null, which stays writable on a read-only mount.
            if empty is None:
                import tempfile

                handle, empty = tempfile.mkstemp(prefix="gptcourse-empty-")
                os.close(handle)
                os.chmod(empty, 0o444)
            _mount(empty, path, None, _MS_BIND, None)
            _mount("none", path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)
    if empty is not None:
        os.unlink(empty)  # the mounts keep the file itself


def enter_pid_namespace() -> None:
    """Go on as the first worker of a new PID namespace, under an init that stays.

    The caller forks twice: the init (pid 1 of the namespace) only waits, and the worker
    returns from this call and goes on. When the worker ends, the init leaves with the
    worker's status, and the kernel then kills every process left in the namespace, also
    those started in a session of their own. The init also dies with the caller's
    process (``PR_SET_PDEATHSIG``), so killing the caller's process group from outside
    ends everything. Inside, no process outside the namespace can be signalled, and
    ``/proc`` shows the namespace's processes only. Needs root, after
    :func:`enter_namespaces` (the private mount namespace holds the new ``/proc``).
    """
    libc = _libc()
    if libc.unshare(_CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    # The caller holds the write end of `alive` until it ends: the init sees end of file if
    # the caller died before the init's death signal was set (getppid() cannot tell: across
    # namespaces it is 0). The init reports the worker's status through `status`: a signal
    # it sends itself would be ignored, as signals to an init from inside are.
    alive_read, alive_write = os.pipe()
    status_read, status_write = os.pipe()
    init = os.fork()
    if init != 0:
        os.close(alive_read)
        os.close(status_write)
        _, own_status = os.waitpid(init, 0)
        reported = os.read(status_read, 32)
        _end_like(int(reported) if reported else own_status)
    os.close(alive_write)
    os.close(status_read)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([alive_read], [], [], 0)[0]:
        os._exit(1)
    os.close(alive_read)
    worker = os.fork()
    if worker != 0:
        while True:  # an init also reaps the orphans handed over to it
            done, worker_status = os.wait()
            if done == worker:
                break
        os.write(status_write, str(worker_status).encode())
        os._exit(0)
    os.close(status_write)
    try:
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    except OSError as exc:
        log.debug("kept the host's /proc: %s", exc)


def _end_like(status: int) -> None:
    """End this process as a child that ended with wait status ``status`` did."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the signal, not a core file
        signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [number])
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def kill_all_others() -> None:
    """SIGKILL every process this one may signal, but itself and its namespace's init: in
    a PID namespace of :func:`enter_pid_namespace`, whatever learner code left running."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refusing anything else.

    Learner code can leave a named pipe (whose open or read would block the grader
    forever), a symbolic link or a device where a result file belongs: each is refused
    with OSError, and so is a file of more than ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{os.path.basename(path)} is not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{os.path.basename(path)} is larger than {limit} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def drop_capabilities() -> None:
    """Stay uid 0 but give up every capability, for this process and all it starts.

    Used when no other uid can run Python: the covered paths then cannot be unmounted and
    no privileged operation (mount, ptrace, raw sockets, chown) is possible.
    """
    libc = _libc()
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; unknown numbers fail harmlessly

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_privileges(uid: int) -> None:
    """Become ``uid`` (group ``uid``) with no supplementary groups; irreversible."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_uid(uid: int) -> None:
    """Kill every process running as ``uid`` (processes that left the process group)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setgid(uid)
            os.setuid(uid)
            # kill(-1) as this uid reaches exactly the processes this uid may signal.
            os.kill(-1, signal.SIGKILL)
        except OSError as exc:
            os._exit(0 if exc.errno == errno.ESRCH else 1)
        os._exit(0)
    os.waitpid(pid, 0)


def clean_environment(home: str) -> dict[str, str]:
    """An environment without the instructor's variables, for learner processes."""
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "GPTCOURSE_QUICK", "GPTCOURSE_CORPUS",
            "OMP_NUM_THREADS", "TZ")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=home, IPYTHONDIR=home,
               JUPYTER_RUNTIME_DIR=home, MPLBACKEND="Agg")
    return env
