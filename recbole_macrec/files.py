"""Atomic file writes, file digests and the clean-up of what killed runs leave behind.

A file is written to a temporary name in its own folder (unique per process and call, so two
runs on one dataset never share one) and renamed into place when complete: a reader never sees
half a file, and an interrupted write leaves the old one. Temporary names carry the writer's pid,
so a later run removes those of processes that no longer exist.
"""
import contextlib
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile

_TEMP = re.compile(r"^\.(?:.+\.)?pid(\d+)-")


def temp_prefix(name):
    return f".{name}.pid{os.getpid()}-"


def usual_mode(directory=False):
    """The mode ``open()`` / ``os.makedirs`` give a new file or folder under the process's umask
    (``tempfile`` creates them owner-only, which a shared dataset or results folder must not get)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside ``path`` (ending in ``suffix``: ``np.savez`` needs ``.npz``);
    on success it replaces ``path``, on failure it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(os.path.basename(path)), suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def temp_dir(folder, name):
    """A new temporary folder in ``folder`` for building ``name`` (published by renaming it)."""
    os.makedirs(folder, exist_ok=True)
    path = tempfile.mkdtemp(prefix=temp_prefix(name), dir=folder)
    os.chmod(path, usual_mode(directory=True))
    return path


def move_into(tmp, out):
    """Move every file of the finished temporary folder ``tmp`` into ``out``, each by an atomic
    rename (a reader sees each file old or new, never half written)."""
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder):
    """Remove the temporary files and folders in ``folder`` whose writing process is gone;
    returns their names."""
    removed = []
    for path in glob.glob(os.path.join(folder, ".*")):
        match = _TEMP.match(os.path.basename(path))
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (utf-8)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def strict_json_value(obj):
    """``obj`` with every non-finite float as None (strict JSON has no NaN or Infinity; RecBole
    reports a best valid score of -inf for a run it never validated)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json_value(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(value) for value in obj]
    return obj


def write_json(path, obj):
    """Write ``obj`` to ``path`` as strict, indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(strict_json_value(obj), f, indent=2, allow_nan=False)


def file_digest(*paths, extra=""):
    """sha256 (hex) over the bytes of ``paths`` (in order) and ``extra``: a cache key for derived
    files, and a checksum of one file."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(extra.encode())
    return h.hexdigest()


def text_digest(text, length=None):
    """sha256 (hex) of ``text``, cut to ``length`` characters when given."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]
