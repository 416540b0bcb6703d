#!/usr/bin/env python3.11
"""Set up the locked environment in .venv/, then run the main job or the tests.

    python3.11 scripts/bootstrap.py train [hydra overrides...]   # set up, then train
    python3.11 scripts/bootstrap.py test  [pytest args...]       # set up, then pytest
    python3.11 scripts/bootstrap.py setup                        # set up only
    python3.11 scripts/bootstrap.py lock                         # re-resolve requirements.lock

Why a script and not `pip install -e .`: TFF 0.87 pins jax/jaxlib 0.4.14, which
PyPI has no Python 3.11 wheels for, so pip cannot resolve the stack at all. uv
can, with the pins overridden (requirements-overrides.txt); the resolved,
hash-checked set is committed as requirements.lock and `uv pip sync` makes
.venv/ exactly that set, every time, on any machine with Python 3.11 and PyPI.
Needs only the standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
UV = VENV / "bin" / "uv"
UV_VERSION = "0.13.9"
LOCK = ROOT / "requirements.lock"
OVERRIDES = ROOT / "requirements-overrides.txt"


def _run(*cmd: str | os.PathLike) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def _uv_ok() -> bool:
    if not UV.exists():
        return False
    out = subprocess.run([UV, "--version"], capture_output=True, text=True)
    return out.returncode == 0 and UV_VERSION in out.stdout


def setup() -> None:
    """Create .venv/ (if needed) and sync it to requirements.lock."""
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"error: Python 3.11 is required (TFF 0.87 / TF 2.14), this is "
                 f"{sys.version.split()[0]}. Fix: run this script with python3.11.")
    if not PY.exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        _run(sys.executable, "-m", "venv", VENV)
    if not _uv_ok():
        _run(PY, "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}")
    env = {"VIRTUAL_ENV": str(VENV)}
    print("bootstrap: syncing .venv/ to requirements.lock", flush=True)
    # Bytecode compiled once here: every run and test subprocess then imports TensorFlow
    # and TFF from .pyc files, even where PYTHONDONTWRITEBYTECODE keeps Python from
    # writing them (up-to-date files are skipped on later syncs).
    subprocess.run([str(UV), "pip", "sync", "--quiet", "--compile-bytecode", "--python",
                    str(PY), str(LOCK)], check=True, cwd=ROOT, env={**os.environ, **env})
    subprocess.run([str(UV), "pip", "install", "--quiet", "--python", str(PY), "--no-deps",
                    "-e", str(ROOT)], check=True, cwd=ROOT, env={**os.environ, **env})


def lock() -> None:
    """Re-resolve requirements.lock from setup.cfg (run after changing dependencies)."""
    setup()
    _run(UV, "pip", "compile", "setup.cfg", "--all-extras", "--override", OVERRIDES,
         "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_31",
         "--generate-hashes", "-o", LOCK)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"train", "test", "setup", "lock"}:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "lock":
        lock()
        return 0
    setup()
    if cmd == "setup":
        return 0
    if cmd == "train":
        args = [str(PY), "-m", "federated_research.train", *rest]
    else:
        args = [str(PY), "-m", "pytest", *rest]
    os.chdir(ROOT)
    os.execv(args[0], args)  # replace this process: signals and exit code pass straight through
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
