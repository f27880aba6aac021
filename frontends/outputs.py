"""Where lipverify writes: one output-path policy for every command that writes a file.

Every output (``--report``, ``--plot``, ``--out``, ``--checkpoint``...) goes through ``OutputPaths``:

- **before any work**, each path is checked: not empty, no NUL byte, not an existing folder or a non-regular
  file (a FIFO, a device), its folder exists and is a folder, it is none of the command's inputs (compared as
  resolved paths *and* as (device, inode), so symbolic and hard links to an input are caught; a folder input
  protects the files directly inside it, which is what the data loaders read), and no two outputs are the same
  file;
- **when writing**, the content goes to a temporary file in the target's own folder that is renamed onto the
  target only once it is complete (``os.replace``, atomic on POSIX): a failed or interrupted write leaves the
  old file (or none) and no partial one, and the temporary file is removed;
- every ``OSError`` (missing folder, permission, full disk, file too large) becomes one ``LipverifyError`` line
  naming the option and the path (exit code 2 at the command line).
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping

from verifier.errors import LipverifyError

PathLike = str | os.PathLike


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists)."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
        return resolved, (st.st_dev, st.st_ino)
    except OSError:
        return resolved, None


def check_path_text(path: PathLike, what: str) -> Path:
    """``path`` as a ``Path``, refusing an empty one or one with a NUL byte (which no OS call accepts)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise LipverifyError(f"{what}: an empty path")
    if "\0" in text:
        raise LipverifyError(f"{what}: the path contains a NUL byte")
    return Path(text)


def input_files(paths: Iterable[PathLike | None]) -> list[Path]:
    """The files a command reads for these input paths: a file itself, a folder's regular files (not
    recursive); missing paths are skipped (their loader reports them)."""
    files: list[Path] = []
    for p in paths:
        if p is None:
            continue
        path = check_path_text(p, "input")
        if path.is_dir():
            with contextlib.suppress(OSError):
                files += [Path(e.path) for e in os.scandir(path) if e.is_file()]
        elif path.exists():
            files.append(path)
    return files


class OutputPaths:
    """A command's output paths, checked against its inputs (see the module docstring).

    ``outputs``: option name -> path (None: not asked for); ``inputs``: the paths the command reads (files or
    folders). Raises ``LipverifyError`` at construction when a path breaks the policy.
    """

    def __init__(self, outputs: Mapping[str, PathLike | None], inputs: Iterable[PathLike | None] = ()):
        self.paths: dict[str, Path] = {flag: check_path_text(p, flag) for flag, p in outputs.items()
                                       if p is not None}
        self._inputs: list[tuple[str, tuple[int, int] | None, Path]] = []
        for flag, path in self.paths.items():
            _check_target(flag, path)
        seen: dict[str, str] = {}
        for flag, path in self.paths.items():
            resolved, _ = _identity(path)
            if resolved in seen:
                raise LipverifyError(f"{flag} and {seen[resolved]} name the same file ({path})")
            seen[resolved] = flag
        self.protect(inputs)

    def protect(self, inputs: Iterable[PathLike | None]) -> None:
        """Add inputs found later (a model's external data files) and check every output against them."""
        for f in input_files(inputs):
            resolved, ident = _identity(f)
            self._inputs.append((resolved, ident, f))
        for flag, path in self.paths.items():
            self._check_not_input(flag, path)

    def _check_not_input(self, flag: str, path: Path) -> None:
        resolved, ident = _identity(path)
        for in_resolved, in_ident, original in self._inputs:
            if resolved == in_resolved or (ident is not None and ident == in_ident):
                raise LipverifyError(f"{flag} {path}: that is an input of this command ({original}); "
                                     "refusing to overwrite it")

    def get(self, flag: str) -> Path | None:
        return self.paths.get(flag)

    def write(self, flag: str, writer: Callable[[IO[bytes]], None]) -> None:
        """Write the output ``flag`` (if asked for) through ``writer(binary file)``, atomically."""
        path = self.paths.get(flag)
        if path is None:
            return
        self._check_not_input(flag, path)  # the file system may have changed since the check
        atomic_write(path, writer, flag)

    def write_bytes(self, flag: str, data: bytes) -> None:
        self.write(flag, lambda f: f.write(data))


def _check_target(flag: str, path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise LipverifyError(f"{flag} {path}: {path.parent} is not a folder")
    except OSError as e:
        raise LipverifyError(f"{flag} {path}: {e.strerror or e}")
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise LipverifyError(f"{flag} {path}: is a folder; give a file path")
        if not stat.S_ISREG(st.st_mode):
            raise LipverifyError(f"{flag} {path}: not a regular file (a device, FIFO or socket); give a file path")
    parent = path.parent
    if not parent.exists():
        raise LipverifyError(f"{flag} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise LipverifyError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LipverifyError(f"{flag} {path}: the folder {parent} is not writable")


def atomic_write(path: PathLike, writer: Callable[[IO[bytes]], None], what: str = "output") -> None:
    """Write ``path`` through ``writer(binary file)``: into a temporary file in the same folder, flushed to
    disk, then renamed onto ``path``; on any failure the temporary file is removed and ``path`` is untouched.
    OS errors become one-line ``LipverifyError``s."""
    path = check_path_text(path, what)
    folder = path.parent
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name[:64]}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what a plain open() would
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise LipverifyError(f"{what} {path}: cannot write ({e.strerror or type(e).__name__})")
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


__all__ = ["OutputPaths", "atomic_write", "check_path_text", "input_files"]
