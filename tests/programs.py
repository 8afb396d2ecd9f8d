"""System programs some tests need (Debian packages), found or explained.

On a developer's machine without the program the test is skipped with a
message naming the package to install; when ``CI`` is set (``.ci/run``
exports it) the test fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def need_program(program: str | Path, package: str, *, why: str) -> Path:
    """The program's path, or skip (fail under CI) naming its Debian package."""
    path = Path(program)
    found = (
        str(path)
        if path.is_absolute() and path.is_file() and os.access(path, os.X_OK)
        else shutil.which(str(program))
    )
    if found:
        return Path(found)
    message = f"{why} needs {program}: apt-get install -y {package}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: never skipped there)", pytrace=False)
    pytest.skip(message)
