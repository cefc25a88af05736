"""Peak resident memory of the project's default runs, each in a fresh process (issue 15, item 3).

    python bench/peak_rss.py                          # experiments/ising.py (quick preset) + the test suite
    python bench/peak_rss.py --runs ising             # any of: ising, pytest, pytest-files, hexagonal, porous
    python bench/peak_rss.py --runs pytest-files      # every tests/test_*.py in its own process
    python bench/peak_rss.py --runs ising hexagonal porous     # the cpu presets are long (~1 h each): opt-in
    python bench/peak_rss.py --runs pytest --per-test # also: which tests raise the suite's peak most

Each run is started as ``python bench/peak_rss.py --child REPORT -- TARGET ARGS``: the child runs the
script (``runpy``, as ``python TARGET ARGS`` would, with the script's folder first on ``sys.path``)
or ``pytest`` in-process and, at exit, writes its own ``getrusage(RUSAGE_SELF).ru_maxrss`` and that of
the processes it started and waited for (``RUSAGE_CHILDREN``: the largest one; Linux counts a forked
child's resident size at the fork, so a subprocess started by a large process reports at least that
process's size then, an upper bound, not what the child used). The parent also keeps
``os.wait4``'s figure for the whole tree. Experiments write to a fresh temporary ``--out`` (a rerun
would reuse the models instead of training them); the Ising run also gets a fresh ``--data-dir``, so
its figure includes generating the data as a first run does. Threads, environment: as inherited (set
nothing to measure the defaults a user gets). Prints a table; ``--json`` (default
``results/peak_rss.json``) gets the figures, the commands and the target (1.5 GB per process); each
run's output goes to ``<json>_logs/<run>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MB = 1536   # issue 15: <= 1.5 GB peak RSS per process


def _runs(tmp):
    """``name -> (target, args)``; ``target`` a script path or ``-m pytest``."""
    out = lambda name: os.path.join(tmp, name)  # noqa: E731
    return {
        "ising": ("experiments/ising.py", ["--out", out("ising"), "--data-dir", out("ising-data"), "--no-progress"]),
        "pytest": ("-m pytest", ["-q", "-p", "no:cacheprovider"]),
        "pytest-files": ("-m pytest", ["-q", "-p", "no:cacheprovider"]),
        "hexagonal": ("experiments/hexagonal.py", ["--out", out("hexagonal"), "--no-progress"]),
        "porous": ("experiments/porous_graphene.py", ["--out", out("porous"), "--no-progress"]),
    }


def _child(report, target, args):
    """Run ``target`` in this process and write its peak RSS to ``report`` at exit."""
    import atexit
    import runpy

    def write():
        self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss       # KiB on Linux
        kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with open(report, "w") as fh:
            json.dump({"self_kb": self_kb, "children_kb": kids_kb}, fh)

    atexit.register(write)
    if target == "-m pytest":
        sys.argv = ["pytest"] + args
        sys.path.insert(0, os.getcwd())
        runpy.run_module("pytest", run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target] + args
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")


def _per_test(path, top=12):
    """The tests after which the process's peak RSS rose most (from ``tests/conftest.py``'s
    ``EDNN_TEST_RSS_LOG`` lines "nodeid current_MB peak_MB"): ``[(nodeid, rise_MB, peak_MB)]``."""
    rows, last = [], 0.0
    with open(path) as fh:
        for line in fh:
            nodeid, _cur, peak = line.rsplit(" ", 2)
            rows.append((nodeid, float(peak) - last, float(peak)))
            last = float(peak)
    return sorted(rows, key=lambda r: -r[1])[:top]


def measure(name, target, args, log_dir, per_test=False):
    """Run one measurement; returns its record (MB are MiB: ru_maxrss / 1024)."""
    report = os.path.join(log_dir, f"{name}.rss.json")
    env = None
    if per_test and target == "-m pytest":
        per_test_log = os.path.join(log_dir, f"{name}.per_test.txt")
        if os.path.exists(per_test_log):
            os.remove(per_test_log)
        env = dict(os.environ, EDNN_TEST_RSS_LOG=per_test_log)
    log = os.path.join(log_dir, f"{name}.log")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", report, "--", target, *args]
    shown = ("python -m pytest " if target == "-m pytest" else f"python {target} ") + " ".join(args)
    print(f"running {name}: {shown} (log {log})", flush=True)
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    rec = {"command": shown, "rc": rc, "wall_s": round(time.time() - t0, 1),
           "tree_peak_mb": round(usage.ru_maxrss / 1024, 1), "log": log}
    if os.path.exists(report):
        with open(report) as fh:
            r = json.load(fh)
        rec.update(peak_mb=round(r["self_kb"] / 1024, 1), subprocess_peak_mb=round(r["children_kb"] / 1024, 1))
    else:   # the child died before atexit (killed): only the tree's figure
        rec.update(peak_mb=None, subprocess_peak_mb=None)
    if env is not None and os.path.exists(per_test_log):
        rec["largest_peak_rises"] = _per_test(per_test_log)
        rec["per_test_log"] = per_test_log
        print("tests after which the peak rose most (MB rise, peak MB):")
        for nodeid, rise, peak in rec["largest_peak_rises"]:
            print(f"  {rise:7.0f} {peak:7.0f}  {nodeid}")
    worst = max(v for v in (rec["peak_mb"], rec["tree_peak_mb"]) if v is not None)
    rec["within_target"] = worst <= TARGET_MB
    return rec


def _ising_figures(path):
    """The Ising run's headline numbers (so a memory fix can be seen not to change them), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        res = json.load(fh)
    return {"c_scan_median_abs_error_J": {c: s["median_abs_error"] for c, s in res["c_scan"].items()},
            "transfer_median_rel_error": res["transfer"]["median_rel_error"],
            "transfer_median_abs_error_J": res["transfer"]["median_abs_error"]}


def _table(records):
    lines = [f"{'run':<34} {'rc':>3} {'wall s':>8} {'peak MB':>9} {'subproc MB':>11} {'<=1.5GB':>8}"]
    for name, r in records.items():
        fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        lines.append(f"{name:<34} {r['rc']:>3} {r['wall_s']:>8.0f} {fmt(r['peak_mb']):>9} "
                     f"{fmt(r['subprocess_peak_mb']):>11} {'yes' if r['within_target'] else 'NO':>8}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        report, sep, target, *args = argv[1:]
        assert sep == "--", argv
        return _child(report, target, args)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["ising", "pytest"],
                    choices=["ising", "pytest", "pytest-files", "hexagonal", "porous"],
                    help="pytest: the whole suite in one process; pytest-files: each test file in its own")
    ap.add_argument("--pytest-files", nargs="+", help="the test files of pytest-files (default tests/test_*.py)")
    ap.add_argument("--json", default=os.path.join(REPO, "results", "peak_rss.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary output folders (printed)")
    ap.add_argument("--per-test", action="store_true",
                    help="pytest runs: log RSS after every test and print the tests that raised the peak most")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="peak_rss_")
    logs = os.path.splitext(os.path.abspath(args.json))[0] + "_logs"
    os.makedirs(logs, exist_ok=True)
    runs = _runs(tmp)
    records = {}
    for name in args.runs:
        target, extra = runs[name]
        if name == "pytest-files":
            files = args.pytest_files or sorted(f"tests/{f}" for f in os.listdir(os.path.join(REPO, "tests"))
                                                if f.startswith("test_") and f.endswith(".py"))
            for f in files:
                records[f] = measure(os.path.basename(f)[:-3], target, extra + [f], logs, args.per_test)
                print(_table({f: records[f]}).splitlines()[1], flush=True)
            continue
        records[name] = measure(name, target, extra, logs, args.per_test)
        if name == "ising":
            records[name]["figures"] = _ising_figures(os.path.join(tmp, "ising", "results.json"))
        print(_table({name: records[name]}).splitlines()[1], flush=True)
    print(_table(records))
    doc = {"target_mb": TARGET_MB, "python": sys.version.split()[0], "cpus": os.cpu_count(),
           "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                          "TF_NUM_INTEROP_THREADS")},
           "date": time.strftime("%Y-%m-%d %H:%M"), "runs": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(doc, fh, indent=1)
    print(f"wrote {args.json}" + (f"; outputs in {tmp}" if args.keep else ""))
    if not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)   # the logs stay, next to the JSON
    return doc


if __name__ == "__main__":
    main()
