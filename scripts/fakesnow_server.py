"""Run a fakesnow server in the foreground, for the local stack and the tests.

Two project-owned adjustments, both at start-up and neither touching fakesnow's files:
- NULL TIMESTAMP values keep their null mask (fakesnow 0.12.1 builds the timestamp struct without
  one, so NULLs would arrive as 1970-01-01);
- with --db-path, every session shares one on-disk database, so data survives a server restart
  without clients having to send fakesnow-specific session parameters.

    python -m scripts.fakesnow_server --port 8765 [--db-path DIR] [--ready-file FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc


def _patch_timestamp_nulls() -> None:
    import fakesnow.arrow

    original = fakesnow.arrow.timestamp_to_sf_struct

    def with_null_mask(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        struct = original(ts)
        if ts.null_count == 0:
            return struct
        children = [pc.fill_null(struct.field(i), 0) for i in range(struct.type.num_fields)]
        fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=ts.is_null())

    fakesnow.arrow.timestamp_to_sf_struct = with_null_mask


def _exit_when_gone(pid: int) -> None:
    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            time.sleep(1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-path", help="directory for persistent databases (default: in memory)")
    parser.add_argument("--ready-file", help="write the connect kwargs here once the server listens")
    parser.add_argument("--exit-with", type=int, help="exit when the process with this pid is gone (tests)")
    args = parser.parse_args()
    if args.exit_with:
        _exit_when_gone(args.exit_with)

    _patch_timestamp_nulls()
    import fakesnow.server
    import uvicorn
    from fakesnow.instance import FakeSnow

    if args.db_path:
        os.makedirs(args.db_path, exist_ok=True)
        fakesnow.server.shared_fs = FakeSnow(db_path=args.db_path)
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)

    config = uvicorn.Config(fakesnow.server.app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    if args.ready_file:
        ready = Path(args.ready_file)
        original_startup = server.startup

        async def startup(sockets=None):  # type: ignore[no-untyped-def]
            await original_startup(sockets)
            ready.write_text(json.dumps({"host": args.host, "port": args.port, "pid": os.getpid()}))

        server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
