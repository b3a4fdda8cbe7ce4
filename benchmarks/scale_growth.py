"""Growth benchmark: the build at 1x, 4x and 16x a real StackExchange dump; wall time and peak memory ratios.

    python benchmarks/scale_growth.py                      # 1x 4x 16x in three modes, and all stages at 1x
    python benchmarks/scale_growth.py --sizes 1 4 16 --modes in_process --all-stages-sizes

Inputs are made by ``benchmarks/make_synthetic_dump.py`` from the real sample (default: the cardano dump in
../shared/data, or $PAIR_CURATION_DATA): N copies of its rows with new ids and their own words, so no copy is a
duplicate of another and every stage does N times the work. Each size runs ``python -m pipelines.build`` as a
child process with ``--skip consistency --skip negatives`` (and ``--skip minhash`` where that stage's module
is absent), in each of --modes:

- in_process: the default DirectRunner, one process (a laptop run);
- multi_processing: ``--direct_num_workers 2 --direct_running_mode multi_processing``: the runner in the
  build process, the stages in 2 worker processes;
- scaled_workers: as multi_processing with one worker per 1x (at most --max-workers), so every worker gets the
  same amount of data at every size, as Dataflow workers do when the job autoscales; shards are bounded to
  2,000 rows there (a shard is gathered into one worker by design), so a worker whose peak still grows points
  at a step that gathers without a bound.

Measured per run: wall time and CPU time (os.wait4 on the child); peak RSS (VmHWM, sampled from /proc) of the
build process (the runner: the DirectRunner holds every shuffled PCollection in it) and of the largest worker
process; pairs read and published. --all-stages-sizes also runs the full graph (embedding, consistency,
negatives) at those sizes, in the first mode. Prints a table and each run's ratios to the smallest size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.make_synthetic_dump import write_synthetic  # noqa: E402

DEFAULT_SAMPLE = Path(os.environ.get("PAIR_CURATION_DATA", REPO.parent / "shared" / "data")) / "stackexchange" \
    / "cardano.stackexchange.com"
WORKER_MARKER = "sdk_worker_main"
# scaled_workers bounds the shards (a shard is gathered into one worker to be sorted, by design) below the
# smallest size, so that what the worker peak still shows is growth that nothing bounds.
SCALED_SHARD_ROWS = 2000


class TreeMemory:
    """Samples /proc every ``interval`` s: the peak RSS (VmHWM) of a process and of each of its descendants."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        self.root_pid = root_pid
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self.is_worker: dict[int, bool] = {}
        self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _parents() -> dict[int, int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        return parents

    def _tree(self) -> list[int]:
        parents = self._parents()
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        tree, stack = [], [self.root_pid]
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children.get(pid, []))
        return tree

    def _sample(self) -> None:
        total = 0
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/status") as handle:
                    status = dict(line.split(":", 1) for line in handle if ":" in line)
                if pid not in self.is_worker:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        self.is_worker[pid] = WORKER_MARKER.encode() in handle.read()
            except OSError:
                continue
            hwm = int(status.get("VmHWM", "0 kB").split()[0])
            total += int(status.get("VmRSS", "0 kB").split()[0])
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)
        self.peak_tree_kb = max(self.peak_tree_kb, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def summary(self, root_maxrss_kb: int) -> dict[str, float]:
        workers = [kb for pid, kb in self.peak_kb.items() if self.is_worker.get(pid)]
        return {"runner_peak_mb": round(max(root_maxrss_kb, self.peak_kb.get(self.root_pid, 0)) / 1024, 1),
                "worker_peak_mb": round(max(workers) / 1024, 1) if workers else None,
                "workers_seen": len(workers),
                "tree_peak_mb": round(self.peak_tree_kb / 1024, 1)}


def skipped_stages(all_stages: bool) -> list[str]:
    skips = [] if all_stages else ["consistency", "negatives"]
    if importlib.util.find_spec("filters.minhash") is None:
        skips.append("minhash")
    return skips


def mode_arguments(mode: str, size: int, max_workers: int) -> list[str]:
    if mode == "in_process":
        return []
    workers = 2 if mode == "multi_processing" else max(1, min(size, max_workers))
    extra = ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    if mode == "scaled_workers":
        extra += ["--set", f"release.shard_rows={SCALED_SHARD_ROWS}",
                  "--set", f"release.reject_shard_rows={SCALED_SHARD_ROWS}"]
    return extra


def run_build(dump: Path, output: Path, skips: list[str], extra: list[str]) -> dict:
    command = [sys.executable, "-m", "pipelines.build", "--source", "stackexchange", "--input", str(dump),
               "--output", str(output), "--overwrite"]
    for stage in skips:
        command += ["--skip", stage]
    command += extra
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with TreeMemory(process.pid) as memory:
        # wait4 gives the child's own rusage (ru_maxrss in kB on Linux); read its output meanwhile.
        output_text = process.stdout.read().decode("utf-8", "replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"build failed ({process.returncode}) for {dump}:\n{output_text[-3000:]}")
    manifest = json.loads((output / "manifest.json").read_text())
    read = next(row for row in manifest["funnel"]["total"] if row["stage"] == "read")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "pairs_read": read["out"], "pairs_published": sum(d["rows"] for d in manifest["datasets"].values()),
            **memory.summary(usage.ru_maxrss)}


def ratio(value, base):
    return round(value / base, 2) if value is not None and base else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--modes", nargs="+", default=["in_process", "multi_processing", "scaled_workers"],
                        choices=["in_process", "multi_processing", "scaled_workers"])
    parser.add_argument("--max-workers", type=int, default=16, help="cap of scaled_workers' worker processes")
    parser.add_argument("--all-stages-sizes", type=int, nargs="*", default=[1],
                        help="sizes also run with every stage (embedding included); none: --all-stages-sizes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pair-curation-growth"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not (args.sample / "Posts.xml").is_file():
        print(f"error: no Posts.xml in {args.sample} (set PAIR_CURATION_DATA or --sample)", file=sys.stderr)
        return 2

    results = []
    plan = [(size, mode, False) for mode in args.modes for size in args.sizes]
    plan += [(size, args.modes[0], True) for size in args.all_stages_sizes]
    for size, mode, all_stages in plan:
        dump_root = args.work / f"dump-{size}x"
        dump = dump_root / args.sample.name
        if not (dump / "Posts.xml").exists():
            write_synthetic(args.sample, size, dump_root)
        skips = skipped_stages(all_stages)
        label = "all stages" if all_stages else "skip " + ",".join(skips)
        print(f"running {size}x {mode} ({label}) ...", file=sys.stderr, flush=True)
        measured = run_build(dump, args.work / f"release-{size}x-{mode}-{'all' if all_stages else 'fast'}", skips,
                             mode_arguments(mode, size, args.max_workers))
        measured.update({"size": size, "mode": mode, "stages": label,
                         "input_bytes": (dump / "Posts.xml").stat().st_size})
        results.append(measured)

    print(f"\n{'size':>5} {'mode':<15} {'stages':<26} {'pairs':>7} {'wall s':>7} {'cpu s':>7} {'runner MB':>9} "
          f"{'worker MB':>9} | {'time x':>6} {'s per 1x':>8} {'cpu per 1x':>10} {'runner x':>8} {'worker x':>8}")
    for row in results:
        same = [r for r in results if r["mode"] == row["mode"] and r["stages"] == row["stages"]]
        base = min(same, key=lambda r: r["size"])
        extra_copies = row["size"] - base["size"]
        row["ratios"] = {"time": ratio(row["wall_s"], base["wall_s"]),
                         # Seconds each extra 1x of input adds: equal at every size when time is linear (the
                         # fixed start-up cost, Python and Beam imports, cancels out).
                         "marginal_s_per_1x": round((row["wall_s"] - base["wall_s"]) / extra_copies, 2)
                         if extra_copies else None,
                         # The same in CPU seconds: steadier than wall time on a shared machine.
                         "marginal_cpu_s_per_1x": round((row["cpu_s"] - base["cpu_s"]) / extra_copies, 2)
                         if extra_copies else None,
                         "runner_memory": ratio(row["runner_peak_mb"], base["runner_peak_mb"]),
                         "worker_memory": ratio(row["worker_peak_mb"], base["worker_peak_mb"])}
        r = row["ratios"]

        def cell(value):
            return "-" if value is None else value

        print(f"{row['size']:>4}x {row['mode']:<15} {row['stages']:<26} {row['pairs_read']:>7,} "
              f"{row['wall_s']:>7} {row['cpu_s']:>7} {row['runner_peak_mb']:>9} {cell(row['worker_peak_mb']):>9} | "
              f"{r['time']:>6} {cell(r['marginal_s_per_1x']):>8} {cell(r['marginal_cpu_s_per_1x']):>10} "
              f"{r['runner_memory']:>8} "
              f"{cell(r['worker_memory']):>8}")
    print("\nratios: to the smallest size of the same mode and stages. s per 1x / cpu per 1x: the wall / CPU "
          "seconds each extra 1x adds (the same at 4x and 16x: linear time; start-up cancels out). "
          "runner MB: peak RSS of the build process (the DirectRunner keeps every shuffle in it); "
          "worker MB: the largest worker process. scaled_workers runs one worker per 1x, so each worker gets "
          "the same data at every size: its worker x near 1 means memory stays flat (shards bounded at "
          f"{SCALED_SHARD_ROWS} rows there).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
