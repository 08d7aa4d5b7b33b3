"""Start-up time of the `multigrain` command: help and version text against `import torch`.

Each command runs `--repeats` times as a fresh subprocess (the installed console script,
beside this interpreter), round-robin so that a background load hits every command alike;
timed: the wall clock from start to exit, output discarded. `info` loads torch (it reports
torch's version and device); the help and version commands must not (tests/test_cli_startup.py
checks which modules they import). `python -c "import torch"`, measured in the same run, is
the floor of any command that loads torch. On a shared machine take the minimum.

    .venv/bin/python benchmarks/cli_startup.py --repeats 7 --output docs/benchmarks/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from multigrain.runtime.machine import describe_machine

COMMANDS: dict[str, list[str]] = {
    "multigrain --help": ["--help"],
    "multigrain --version": ["--version"],
    "multigrain embed --help": ["embed", "--help"],
    "multigrain find-duplicates --help": ["find-duplicates", "--help"],
    "multigrain info": ["info"],
}
BASELINE = "python -c 'import torch'"


def command_lines() -> dict[str, list[str]]:
    """Label -> argv of every timed command, the `import torch` baseline last."""
    script = Path(sys.executable).with_name("multigrain")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "multigrain"]
    lines = {label: [*launcher, *args] for label, args in COMMANDS.items()}
    lines[BASELINE] = [sys.executable, "-c", "import torch"]
    return lines


def time_once(argv: list[str]) -> tuple[float, int]:
    """(wall-clock seconds, exit status) of one run of `argv`."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/cli_startup.json"))
    args = parser.parse_args()

    lines = command_lines()
    for argv in lines.values():  # warm the file cache; not timed
        time_once(argv)
    seconds: dict[str, list[float]] = {label: [] for label in lines}
    status: dict[str, int] = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for label, argv in lines.items():
            elapsed, status[label] = time_once(argv)
            seconds[label].append(elapsed)
    results = {
        label: {
            "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "runs": len(times),
            "exit_status": status[label],
        }
        for label, times in seconds.items()
    }
    report = {
        "benchmark": "cli_startup",
        "timing": "subprocess wall clock, round-robin over the commands, output discarded",
        "allocator_setting": os.environ.get("MULTIGRAIN_ALLOCATOR", "auto"),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "machine": describe_machine(),
        "commands": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(label) for label in results)
    for label, row in results.items():
        print(f"{label:<{width}}  min {row['min_s']:.3f} s  median {row['median_s']:.3f} s")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
