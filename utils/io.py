"""Small, safe file helpers: every file is written atomically (temporary file in the same
folder, then rename), so a run killed at any moment leaves either the old file or the new one,
never half of one. The file gets the permissions the umask gives a new file (0644 under umask
022), as open() would: mkstemp's private 0600 would hide results from colleagues on a shared
server."""
import csv
import io
import json
import os
import tempfile

import torch


def _umask():
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_open(path):
    """(file object, temporary path) in the folder of `path`, with the umask's permissions."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.fspath(path)) or ".")
    os.fchmod(fd, 0o666 & ~_umask())
    return os.fdopen(fd, "wb"), tmp


def _atomic_write(path, write):
    """write(file) into a temporary file, then rename it to `path`; no trace on failure."""
    path = os.fspath(path)
    f, tmp = _atomic_open(path)
    try:
        with f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_bytes(path, data: bytes):
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str):
    _atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_csv(path, header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savefig(fig, path, **kwargs):
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(os.fspath(path))[1][1:] or "png", **kwargs)
    _atomic_write_bytes(path, buf.getvalue())
