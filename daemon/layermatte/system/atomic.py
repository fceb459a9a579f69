"""Write-then-rename for every user-visible output: a failed or interrupted
write never leaves a partial file, and the old file stays until the new one
is complete."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InvalidInput


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(output: Path, *, mode_from: Path | None = None,
                  before_replace: Callable[[], None] | None = None) -> Iterator[str]:
    """Yields a temporary path beside `output`; renamed over it on success.

    The new file gets the permissions a plain open() would give (umask), or
    those of `mode_from` (in-place edits keep the original's mode).
    """
    output = Path(output)
    if not output.parent.is_dir():
        raise InvalidInput(f"{output.parent}: output folder does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=output.suffix)
    except OSError as e:
        raise InvalidInput(f"{output}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield tmp
        if mode_from is not None:
            shutil.copymode(mode_from, tmp)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, output)
    except OSError as e:
        raise InvalidInput(f"{output}: cannot write ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
