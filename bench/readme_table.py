"""The README's throughput and memory tables, from a `make bench` result file.

    python -m bench.readme_table [bench/results/throughput.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.throughput import DEFAULT_OUT


def throughput_table(report: dict[str, Any]) -> str:
    lines = ["| phase | seconds | rows/s | MiB/s | vs (a) | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['phase']} | {r['seconds']:.1f} | {r['rows_per_s']:,} | {r['mib_per_s']:.1f} | "
                     f"{r['vs_limit']:.2f} | {r['rss_mb']:,.0f} |")
    return "\n".join(lines)


def memory_table(report: dict[str, Any]) -> str:
    lines = ["| phase | threads | budget's estimate MiB | bound (+300) MiB | measured peak RSS MiB | within |",
             "|---|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        if r.get("estimate_mb") is None:
            continue
        threads = r["workers"] if r.get("workers") is not None else int(r["phase"].split(", ")[-1].split()[0])
        lines.append(f"| {r['phase']} | {threads} | {r['estimate_mb']:,.0f} | {r['bound_mb']:,.0f} | {r['rss_mb']:,.0f} | "
                     f"{'yes' if r['rss_mb'] <= r['bound_mb'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    report = json.loads(path.read_text())
    print(throughput_table(report))
    print()
    print(memory_table(report))


if __name__ == "__main__":
    main()
