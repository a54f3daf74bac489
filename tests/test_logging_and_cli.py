"""Logging never doubles lines inside Lambda; CLI flags mirror the execution-input overrides."""

from __future__ import annotations

import logging

from lib.config import OVERRIDE_KEYS, SETTING_NAMES
from lib.log import LOGGER_NAME, ctx, get_logger
from migrate import build_parser, overrides_from_args


def test_inside_lambda_no_handler_is_added_so_lines_are_never_doubled(monkeypatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "migration-work")
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    for _ in range(3):  # every warm invocation calls get_logger again
        get_logger()
    assert logger.handlers == [] and logger.propagate


def test_outside_lambda_exactly_one_handler_however_often_it_is_asked(monkeypatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    for _ in range(3):
        get_logger()
    assert len(logger.handlers) == 1


def test_log_lines_carry_run_table_and_chunk(capsys, monkeypatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    logging.getLogger(LOGGER_NAME).handlers.clear()
    get_logger().warning("chunk failed", **ctx(run_id=7, table="DB.S.T", chunk=3))
    assert "chunk failed run_id=7 table=DB.S.T chunk=3" in capsys.readouterr().err


def test_every_override_is_also_a_cli_flag() -> None:
    args = build_parser().parse_args(
        ["run", "--source", "s", "--no-resume", "--table", "A", "--resume-max-age", "8760", "--parallel-threads", "3",
         "--batch-size", "1000", "--max-attempts", "5", "--retry-base-seconds", "0.5", "--load-mode", "swap",
         "--insert-only-mode", "true"])
    overrides = overrides_from_args(args)
    assert overrides == {"tables": ["A"], "no_resume": True, "resume_max_age": 8760.0, "parallel_threads": 3,
                         "batch_size": 1000, "max_attempts": 5, "retry_base_seconds": 0.5, "load_mode": "swap",
                         "insert_only_mode": "true"}
    assert set(SETTING_NAMES) | {"tables", "no_resume", "abandon_live", "load_mode", "insert_only_mode"} == \
        OVERRIDE_KEYS - {"source_name"}
    assert OVERRIDE_KEYS - {"source_name"} <= {action.dest for action in build_parser()._actions}


EXITS = """
import atexit, sys, threading, time
sys.path.insert(0, sys.argv[1])
import migrate
out = sys.argv[2]
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
if sys.argv[3] == "thread":  # a thread of ours still working: the exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.3), open(out + ".thread", "w").write("done"))).start()
print("unflushed output", end="")
migrate.exit_without_teardown(3)
"""


def test_the_cli_exit_keeps_its_code_output_exit_handlers_and_waits_for_a_working_thread(tmp_path) -> None:
    """migrate.py exits without the interpreter's teardown: nothing a command leaves to the exit may be lost."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    for mode in ("alone", "thread"):
        out = str(tmp_path / mode)
        done = subprocess.run([sys.executable, "-c", EXITS, root, out, mode], capture_output=True, text=True, timeout=60)
        assert done.returncode == 3 and done.stdout == "unflushed output", (done.returncode, done.stdout, done.stderr)
        assert Path(out + ".atexit").read_text() == "ran"
        if mode == "thread":
            assert Path(out + ".thread").read_text() == "done"
