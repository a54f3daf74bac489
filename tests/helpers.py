"""Small helpers shared by tests: run the real CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli(env: dict[str, str], config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "migrate.py"), *args, "--source", "test", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def cli_popen(env: dict[str, str], config: Path, *args: str) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "migrate.py"), *args, "--source", "test", "--config", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
