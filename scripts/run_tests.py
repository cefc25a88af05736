#!/usr/bin/env python
"""The test suite, one ``pytest`` process per test file (the README's test command, ``.ci/run``).

    python scripts/run_tests.py                      # every tests/test_*.py, each in its own process
    python scripts/run_tests.py -x -k resume         # options go to every pytest process
    python scripts/run_tests.py tests/test_model.py tests/test_cli.py::test_info   # only these

Why not one ``python -m pytest``: TensorFlow's oneDNN keeps buffers for every input shape and
network it has run until the process ends (``keras.backend.clear_session``, ``gc``,
``malloc_trim``, ``MALLOC_ARENA_MAX`` and ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` do not free them;
``TF_ENABLE_ONEDNN_OPTS=0``, which changes float32 round-off, frees a part). Over the whole suite one
process grows to about 1.9 GB peak resident memory; with a process per file the largest peak is
that of the heaviest file (``python bench/peak_rss.py --runs pytest-files``; figures in
docs/results.md). ``python -m pytest -q`` still runs the same tests with the same results, in
one process.

Output of each file streams as it runs; a summary with the summed counts ends it. Exit status: 0
when every file passed (or selected nothing), else 1 (the failing files are listed), 130 on
Ctrl-C.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)\b")
#: pytest's exit statuses that are no failure: all passed, nothing selected (``-k`` / ``-m`` filters)
OK_STATUS = (0, 5)


def split_args(argv):
    """``(files, options)``: arguments naming an existing test file or node (``path::name``) are files,
    grouped by file in the order given, and a folder stands for its ``test_*.py`` files; everything
    else is passed to every pytest process."""
    files, options = {}, []
    for arg in argv:
        path = arg.split("::", 1)[0]
        if not arg.startswith("-") and os.path.isdir(arg):
            for f in sorted(glob.glob(os.path.join(arg, "**", "test_*.py"), recursive=True)):
                files.setdefault(f, [os.path.abspath(f)])
        elif not arg.startswith("-") and path.endswith(".py") and os.path.isfile(path):
            files.setdefault(path, []).append(os.path.abspath(path) + arg[len(path):])
        else:
            options.append(arg)
    return files, options


def all_test_files():
    tests = os.path.join(REPO, "tests")
    return {os.path.join("tests", f): [os.path.join("tests", f)]
            for f in sorted(os.listdir(tests)) if f.startswith("test_") and f.endswith(".py")}


def run_file(nodes, options):
    """Run pytest on ``nodes`` (one file's) in a new process, streaming its output; returns
    ``(status, counts)`` with counts parsed from pytest's last summary line."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *options, *nodes]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    summary = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if COUNT.search(line) and re.search(r" in [\d.]+s", line):
            summary = line
    status = proc.wait()
    counts = {}
    for n, kind in COUNT.findall(summary):
        kind = {"error": "errors", "warning": "warnings"}.get(kind, kind)
        counts[kind] = counts.get(kind, 0) + int(n)
    return status, counts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    files, options = split_args(argv)
    files = files or all_test_files()
    if not any(o in ("-q", "--quiet", "-v", "--verbose") or o.startswith(("-q", "-v")) for o in options):
        options = ["-q", *options]
    total, failed, t0 = {}, [], time.perf_counter()
    try:
        for i, (path, nodes) in enumerate(files.items()):
            print(f"=== {path} (process {i + 1} of {len(files)})", flush=True)
            status, counts = run_file(nodes, options)
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
            if status not in OK_STATUS:
                failed.append(f"{path} (pytest exit status {status})")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    order = ("passed", "failed", "errors", "skipped", "deselected", "xfailed", "xpassed", "warnings")
    counts = ", ".join(f"{total[k]} {k}" for k in order if total.get(k))
    print(f"=== suite: {counts or 'no tests'} in {len(files)} file{'s' * (len(files) != 1)}, one process each, "
          f"{time.perf_counter() - t0:.0f} s")
    if failed:
        print("=== FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
