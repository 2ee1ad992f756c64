"""Writing outputs so that nobody ever sees half of one: a folder or file is the old one, the new one, or
absent — never a mix, never a truncated file. Every command that writes uses these (run's result folder,
`validate run`'s measurements folder, `calibrate`'s profile)."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from splitsim.errors import ScenarioError
from splitsim.files import shown

NAME_MAX_BYTES = 255  # the longest file name Linux, macOS and Windows file systems take
T = TypeVar("T")


def check_out_path(path: Path, flag: str = "--out", folder: bool = True) -> None:
    """Before any work: `path` (a folder, or a file if not `folder`) can be created or replaced there."""
    where = f"{flag} {shown(path)}"
    for i, part in enumerate(path.parts):
        limit = NAME_MAX_BYTES - (20 if i == len(path.parts) - 1 else 0)  # room for ".tmp-<pid>"
        if len(part.encode()) > limit:
            raise ScenarioError(f"{where}: a name of {len(part.encode())} bytes (at most {limit} here)")
    if folder and path.exists() and not path.is_dir():
        raise ScenarioError(f"{where}: is a file, not a folder")
    if not folder and path.is_dir():
        raise ScenarioError(f"{where}: is a folder; give a file name")
    parent = path.absolute().parent
    while not parent.exists():
        if not folder:
            raise ScenarioError(f"{where}: no folder {shown(path.parent)}")
        parent = parent.parent
    if not parent.is_dir():
        raise ScenarioError(f"{where}: {parent} is a file, so no folder can be made inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ScenarioError(f"{where}: {parent} is not writable")


def replace_folder(out_dir: Path, write_into: Callable[[Path], T],
                   on_step: Callable[[str], None] | None = None) -> T:
    """`write_into(staging)` fills a fresh sibling `<out>.tmp-<pid>`; then the old folder moves aside to
    `<out>.old-<pid>`, the new one takes its name and the old one is removed. Leftovers of an interrupted
    writer are removed first. `on_step(label)` is called after each rename (tests interrupt there)."""
    step = on_step or (lambda label: None)
    out_dir = Path(out_dir)
    remove_leftovers(out_dir)
    staging = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    staging.mkdir(parents=True)
    try:
        written = write_into(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
        step("old result moved aside")
    staging.rename(out_dir)
    step("new result in place")
    shutil.rmtree(old, ignore_errors=True)
    return written


def remove_leftovers(out_dir: Path) -> None:
    """Folders an interrupted writer left beside `out_dir` (`<out>.tmp-*`, `<out>.old-*`)."""
    parent = out_dir.parent
    if parent.is_dir():
        for pattern in (f"{glob.escape(out_dir.name)}.tmp-*", f"{glob.escape(out_dir.name)}.old-*"):
            for leftover in parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """The whole text or the file as it was: written beside it, then renamed over it."""
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
