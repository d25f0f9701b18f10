"""Files written whole or not at all: every file goes to a temporary name in its folder, then is renamed over the
target, so a kill at any moment leaves the old file or the new one, never half of one. Strict JSON (a value that does
not exist is null), YAML, safetensors, numpy arrays, torch files, CSV; sha256 digests of files."""
import csv
import errno
import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn):
    """write_fn(tmp_path) writes the file; it then replaces `path` in one rename (never a half-written file), with the
    usual permissions. An OSError names `path`, not the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and safetensors) create 0600
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        code = getattr(e, "errno", None)
        # numpy's writer (OSError without errno) and C++ writers (torch.save: RuntimeError "iostream error") do not
        # say that the disk is full: the free space does
        if code is None and shutil.disk_usage(folder).free < (1 << 20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
        if isinstance(e, OSError):
            raise OSError(code, e.strerror or str(e), path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def strict(obj):
    """obj with every NaN/inf float replaced by None, for strict JSON (a value that does not exist is null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(strict(obj), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
    atomic_write(path, write)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def save_yaml(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=True, default_flow_style=False)
    atomic_write(path, write)


def save_weights(path, state_dict):
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))


def load_weights(path):
    return load_file(path, device="cpu")


def save_array(path, array):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
    atomic_write(path, write)


def save_torch(path, obj):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path):
    """sha256 of a file's content (member files in records, pre-trained checkpoints in phase-I cache keys)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _seal_path(path):
    return path + ".sha256"


def seal(path):
    """Write `path`'s sha256 beside it (<path>.sha256): cache entries that must never be used damaged."""
    digest = file_sha256(path)
    atomic_write(_seal_path(path), lambda tmp: pathlib.Path(tmp).write_text(digest + "\n"))


def intact(path, unsealed=False):
    """Whether the cache entry `path` exists and matches the digest beside it; an entry without one (written before
    entries were sealed) counts as `unsealed`."""
    if not os.path.exists(path):
        return False
    try:
        with open(_seal_path(path)) as f:
            expected = f.read().strip()
    except FileNotFoundError:
        return unsealed
    except OSError:
        return False
    return file_sha256(path) == expected


def copy_file(src, dst):
    """Put a copy of `src` at `dst`, atomically (a copy, not a link: damage to one never spreads to the other)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def write_csv(path, rows, columns):
    """rows (dicts) as a CSV file with these columns (other keys ignored), atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)
