"""Where a benchmark leaves its figures: printed, and kept in bench/results/ for the docs that quote them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def keep(name: str, result: dict[str, Any]) -> None:
    """Print `result` and write it to bench/results/<name>.json."""
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(text + "\n")
