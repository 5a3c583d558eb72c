"""Atomic writes: a file, or a whole folder, appears complete or not at all.

:func:`write_file`
    One file through a hidden temporary sibling (``.tmp-<name>-<pid>-<random>``),
    fsync'd and renamed over ``path`` (the dataset runner's part files, its
    summary, report pages).
:func:`write_folder`
    A whole folder written into a hidden temporary sibling
    (``.<name>.tmp-<pid>-<random>``) and renamed into place, replacing an
    earlier folder there whole (:meth:`Explanation.save
    <eac.engine.explanation.Explanation.save>`, report image folders). When
    several processes write one destination at once the last rename wins and
    each folder stays internally consistent.
:func:`check_destination`
    Checks, writing nothing, that a folder can be written or replaced there.

Names starting with ``.`` are hidden: readers (``pyarrow.dataset``,
:meth:`Explanation.load`) ignore what a killed process leaves behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import EacError

#: Prefix of a file being written by :func:`write_file` (the dataset runner removes stale ones).
TMP_PREFIX = ".tmp-"
#: Tags of a folder's hidden siblings: ``.<name><tag><pid>-<random hex>``.
TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
#: Name prefix of the empty folder :func:`check_destination` creates and removes to learn it can write.
PROBE_PREFIX = ".eac-probe-"
#: Random bytes in a temporary file's name (collisions only matter within one process id).
FILE_RANDOM_BYTES = 4
#: Random bytes in a temporary folder's name.
NAME_RANDOM_BYTES = 6
#: How often a folder write retries moving its folder into place while other processes
#: write to the same destination.
REPLACE_ATTEMPTS = 64


def os_reason(exc: OSError) -> str:
    """An OSError's reason on one line."""
    return exc.strerror or str(exc).splitlines()[0]


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` into a hidden temporary sibling, fsync, rename.

    Parameters
    ----------
    path : Path
        The destination file (its folder must exist); replaced whole.
    write : callable(Path)
        Writes the complete file at the path it is given.

    Raises
    ------
    OSError
        Writing or renaming failed; the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(FILE_RANDOM_BYTES)}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_folder(dest: Path, write: Callable[[Path], None], *, what: str = "result",
                 error: type[EacError] = EacError) -> None:
    """Write a whole folder at ``dest`` atomically: ``write(tmp)`` fills a hidden sibling, renamed into place.

    Parameters
    ----------
    dest : Path
        The destination folder (absolute; its parents are created). An existing
        folder there is replaced whole; check it with :func:`check_destination` first.
    write : callable(Path)
        Fills the (existing, empty) folder it is given.
    what : str
        What is written, for the messages ("explanation").
    error : type of EacError
        The error raised when the file system refuses.

    Raises
    ------
    EacError
        (of type ``error``) the folder could not be written or moved into place;
        nothing is left behind then and an earlier folder at ``dest`` is kept.
        Errors raised by ``write`` pass through, with the same clean-up.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{dest}: cannot create the output folder ({os_reason(exc)})") from exc
    tmp = _make_sibling(dest, TMP_TAG, error)
    try:
        write(tmp)
        _move_into_place(tmp, dest, error)
    except OSError as exc:
        raise error(f"{dest}: cannot write the {what} ({os_reason(exc)})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded


def check_destination(path: str | os.PathLike, marker: str, *, replace: bool = True,
                      what: str = "result", error: type[EacError] = EacError) -> Path:
    """Check, before any work, that :func:`write_folder` can write ``path``.

    Nothing is left behind: the writability check creates an empty probe folder
    in the nearest existing folder and removes it.

    Parameters
    ----------
    path : str or path-like
        The folder to be replaced whole (``replace=True``), or a folder that
        result folders will be written into (``replace=False``).
    marker : str
        The file name every folder written here holds (``explanation.json``): an
        existing non-empty folder without it is never replaced.
    replace : bool
        Whether ``path`` itself is replaced whole. Then an existing ``path`` must
        be empty or hold ``marker``, and its parent must be writable. Otherwise
        ``path``, when it exists, must be a writable folder.
    what : str
        What is written, for the messages ("explanation").
    error : type of EacError
        The error raised.

    Returns
    -------
    Path
        The absolute destination (a symbolic link to a folder is resolved).

    Raises
    ------
    EacError
        (of type ``error``) ``path`` is a file, lies under a file, is not
        writable, or (``replace``) is a folder holding other files; one line.
    """
    a_what = ("an " if what[:1] in "aeiou" else "a ") + what
    dest = Path(os.path.abspath(Path(path).expanduser()))
    if dest.is_symlink() and dest.is_dir():
        dest = dest.resolve()
    if dest.parent == dest:
        raise error(f"{dest}: cannot write {a_what} as the filesystem root; give a folder below it")
    if dest.exists() and not dest.is_dir():
        raise error(f"{dest}: is a file, not a folder; give a folder path for the output")
    blocked = creation_blocker(dest.parent if replace else dest)
    if blocked is not None:
        nearest, reason = blocked
        if reason is None:
            raise error(f"{dest}: cannot create the output folder, {nearest} is a file")
        raise error(f"{dest}: cannot write there: nothing can be created in {nearest} ({reason}); "
                    "give another output folder")
    if replace and _holds_foreign_files(dest, marker):
        raise error(f"{dest}: folder holds files that are not {a_what} and saving replaces the folder whole; "
                    "give a new or empty folder")
    return dest


def creation_blocker(path: Path) -> tuple[Path, str | None] | None:
    """What stops ``path`` (and its missing parent folders) from being created, or None when nothing does.

    Returns
    -------
    (Path, str or None) or None
        The nearest existing ancestor (or ``path`` itself) and, when it is a folder, why
        nothing can be created in it (:func:`cannot_create_in`); None for the reason when it
        is a file.
    """
    nearest = Path(path)
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        return nearest, None
    reason = cannot_create_in(nearest)
    return None if reason is None else (nearest, reason)


def cannot_create_in(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (one line), or None when a probe entry was made and removed.

    A real attempt, not ``os.access``: the permission bits say yes to root, while a read-only
    filesystem or a pseudo-filesystem (``/proc``) still refuses.
    """
    try:
        probe = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=folder))
    except OSError as exc:
        if exc.errno == errno.ENOENT and folder.is_dir():
            # /proc answers "No such file or directory" for a folder that is plainly there
            return "its filesystem does not allow new entries"
        return os_reason(exc)
    try:
        probe.rmdir()
    except OSError:  # pragma: no cover - removed by someone else meanwhile; nothing of ours is left
        pass
    return None


def _holds_foreign_files(folder: Path, marker: str) -> bool:
    """Whether ``folder`` is a folder holding entries but no ``marker``.

    The folder is listed once (one directory, even while other processes swap
    folders at that path), so a folder being replaced is never mistaken for
    foreign files. An unreadable folder counts as foreign.
    """
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return bool(names) and marker not in names


def _sibling_name(dest: Path, tag: str) -> Path:
    """A hidden, unique-by-chance sibling of ``dest``: ``.<name><tag><pid>-<random>``."""
    return dest.with_name(f".{dest.name}{tag}{os.getpid()}-{secrets.token_hex(NAME_RANDOM_BYTES)}")


def _make_sibling(dest: Path, tag: str, error: type[EacError]) -> Path:
    """Create an empty hidden sibling folder of ``dest`` (with the permissions of a plain mkdir)."""
    for _ in range(REPLACE_ATTEMPTS):
        path = _sibling_name(dest, tag)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise error(f"{dest}: cannot create a folder beside it ({os_reason(exc)})") from exc
        return path
    raise error(f"{dest}: cannot find a free temporary name beside it")


def _move_into_place(tmp: Path, dest: Path, error: type[EacError]) -> None:
    """Rename the finished folder ``tmp`` to ``dest``, replacing a folder there whole.

    POSIX ``rename`` replaces only an empty folder, so an existing ``dest`` is
    first renamed aside (a hidden sibling) and deleted after the new folder is
    in place. When another process does the same at the same moment, either
    rename may fail; the loop then tries again, and the last rename wins.
    """
    aside: list[Path] = []
    placed = False
    try:
        for _ in range(REPLACE_ATTEMPTS):
            try:
                os.rename(tmp, dest)
                placed = True
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            old = _sibling_name(dest, OLD_TAG)
            try:
                os.rename(dest, old)
            except FileNotFoundError:
                continue  # another process moved it away first
            aside.append(old)
        raise error(f"{dest}: could not move the result into place; other processes keep writing there")
    finally:
        if not placed and aside:
            # Interrupted after setting the old result aside: put it back if nothing took its place.
            try:
                os.rename(aside[-1], dest)
                aside.pop()
            except OSError:
                pass
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)
