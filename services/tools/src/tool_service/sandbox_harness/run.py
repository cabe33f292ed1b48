"""Sandbox harness: runs a `run_code` Python program, then reports its output folder.

Runs INSIDE the sandbox, as the program's own interpreter: the program is run as
`__main__`; when it ends (normally, by an exception or by `sys.exit`), the regular
files it left in the output folder are written to the report descriptor as JSON
lines `{"type": "file", "path": ..., "data": <base64>}`. The service treats
everything read from that descriptor as untrusted.
"""

import base64
import contextlib
import json
import os
import resource
import runpy
import stat
import sys
import traceback

MAX_FILES = 100


def report_files(fd: int, folder: str) -> None:
    """Write the regular files under `folder` (no links followed) to `fd`."""
    sent = 0
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        peak = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        out.write(json.dumps({"type": "usage", "max_rss_kb": peak}) + "\n")
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    continue
                if sent >= MAX_FILES:
                    out.write(json.dumps({"type": "dropped"}) + "\n")
                    continue
                with open(path, "rb") as f:
                    data = base64.b64encode(f.read()).decode()
                rel = os.path.relpath(path, folder)
                out.write(json.dumps({"type": "file", "path": rel, "data": data}) + "\n")
                sent += 1


def main() -> int:
    """Run the program; its exit code."""
    fd = int(os.environ.pop("AGENTRT_REPORT_FD"))
    folder = os.environ["AGENTRT_OUTPUT"]  # stays: where the program puts its files
    code = os.environ.pop("AGENTRT_CODE")
    sys.argv = [code]
    sys.path[0] = os.path.dirname(code)
    status = 0
    try:
        runpy.run_path(code, run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            status = 0
        elif isinstance(e.code, int):
            status = e.code
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:  # the program's own error: shown as Python would show it
        frames = traceback.extract_tb(e.__traceback__)
        own = [f for f in frames if f.filename == code]
        print("Traceback (most recent call last):", file=sys.stderr)
        print("".join(traceback.format_list(own)), end="", file=sys.stderr)
        print("".join(traceback.format_exception_only(e)), end="", file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    try:
        report_files(fd, folder)
    except OSError as e:
        print(f"output folder not reported: {e}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
