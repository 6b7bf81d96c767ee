"""Nothing half-written: folders are built beside their target and swapped in by rename."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside `target`. If the block succeeds it replaces `target` (an existing
    one is kept until the new one is in place); if it fails, the folder is removed and `target` is
    untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    staged.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staged
        replace_dir(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def replace_dir(staged: Path, target: Path) -> None:
    """Put a complete folder at `target`, moving any previous one aside first and deleting it after."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)
