"""One writer per release, and nothing outside the release's own objects changes: output/input overlap,
objects the project did not write, concurrent builds (local folder and S3 prefix), kill -9 at several moments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.release.ownership import CLAIM_KEY
from pipelines.verify import main as verify_main
from tests.helpers import run_build

pytest_plugins = ("tests.s3_server",)

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = ("--source", "jsonl", "--skip", "minhash", "--skip", "consistency", "--skip", "negatives")


def write_pairs(path: Path, count: int = 300) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for index in range(count):
            handle.write(json.dumps({"id": f"r{index}", "query": f"question number {index} about topic {index % 7}",
                                     "document": f"the answer text {index} with some words {index * 13}"}) + "\n")
        handle.write("not json\n")  # one reject, so rejects/ is written too
    return path


def build_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_build(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.build", *FAST, *args], cwd=REPO_ROOT, env=build_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- overlap ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["same", "output_inside_input", "input_inside_output", "symlinked_output"])
def test_an_output_overlapping_an_input_is_refused_and_nothing_changes(tmp_path, capsys, layout):
    folder = tmp_path / "work"
    write_pairs(folder / "data" / "my_pairs.jsonl")
    output = {"same": folder, "output_inside_input": folder / "release",
              "input_inside_output": tmp_path, "symlinked_output": tmp_path / "link"}[layout]
    if layout == "symlinked_output":
        output.symlink_to(folder)
    before = tree(tmp_path)
    assert run_build(*FAST, "--input", str(folder), "--output", str(output)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the input" in err[0], err
    assert tree(tmp_path) == before


def test_objects_the_project_did_not_write_are_never_removed(tmp_path, capsys):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    release = tmp_path / "release"
    (release / "data").mkdir(parents=True)
    (release / "data" / "my_notes.jsonl").write_text("mine\n")
    # Where the release puts its rows: refused, untouched (a release there would not verify).
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write" in err[0] and "data/my_notes.jsonl" in err[0]
    assert tree(release) == {"data/my_notes.jsonl": b"mine\n"}

    # Elsewhere in the folder: left alone, named on stderr and in the run record, and the release verifies.
    (release / "data" / "my_notes.jsonl").rename(release / "notes.jsonl")
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release)) == 0
    err = capsys.readouterr().err
    assert "left alone" in err and "notes.jsonl" in err
    assert (release / "notes.jsonl").read_text() == "mine\n"
    record = json.loads(next((release / "runs").glob("run-*.json")).read_text())
    assert record["left_alone"] == ["notes.jsonl"] and record["finished"] and record["status"] == 0
    assert not (release / CLAIM_KEY).exists()
    assert verify_main([str(release)]) == 0


def test_rebuild_removes_only_its_own_leftovers(tmp_path, capsys):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    release = tmp_path / "release"
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release), "--set", "release.shard_rows=50") == 0
    first = {p.name for p in (release / "data" / "custom_pairs").glob("shard-*")}
    assert len(first) > 1
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release), "--overwrite") == 0
    second = {p.name for p in (release / "data" / "custom_pairs").glob("shard-*")}
    assert len(second) < len(first)  # the first run's extra shards are gone: the project wrote them
    capsys.readouterr()
    assert verify_main([str(release)]) == 0


# -- one writer ---------------------------------------------------------------------------------------------------

def _assert_one_committed(results, verify_uri, capsys):
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = error_lines(loser)
    assert len(lines) == 1 and "Traceback" not in loser, loser
    assert "being written by another build" in lines[0] or "already exists" in lines[0], lines
    capsys.readouterr()
    assert verify_main([verify_uri]) == 0


def test_two_concurrent_builds_to_one_folder_one_commits(tmp_path, capsys):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    release = tmp_path / "release"
    builds = [start_build("--input", str(inputs), "--output", str(release)) for _ in range(2)]
    results = [(build.wait(300), build.communicate()[1]) for build in builds]
    _assert_one_committed(results, str(release), capsys)
    assert not (release / CLAIM_KEY).exists()


def test_two_concurrent_builds_to_one_s3_prefix_one_commits(tmp_path, s3_env, s3_bucket, capsys):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    uri = f"s3://{s3_bucket}/concurrent"
    builds = [start_build("--input", str(inputs), "--output", uri) for _ in range(2)]
    results = [(build.wait(300), build.communicate()[1]) for build in builds]
    _assert_one_committed(results, uri, capsys)


def test_a_held_claim_names_its_holder_and_only_break_claim_clears_it(tmp_path, capsys):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    release = tmp_path / "release"
    (release / "runs").mkdir(parents=True)
    (release / CLAIM_KEY).write_text(json.dumps({"run_id": "deadbeef" * 4, "host": "builder-7", "pid": 4242,
                                                 "started_utc": "2026-01-01T00:00:00Z"}))
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "builder-7" in err[0] and "4242" in err[0] and "--break-claim" in err[0]
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release), "--break-claim") == 0
    assert not (release / CLAIM_KEY).exists()


def test_an_s3_overlap_is_refused(tmp_path, s3_env, s3_bucket, capsys):
    inputs = write_pairs(tmp_path / "pairs.jsonl")
    s3_env.client().upload_file(str(inputs), s3_bucket, "shared/in/pairs.jsonl")
    assert run_build(*FAST, "--input", f"s3://{s3_bucket}/shared/in/pairs.jsonl",
                     "--output", f"s3://{s3_bucket}/shared") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the input" in err[0]


# -- kill -9 ------------------------------------------------------------------------------------------------------

def _wait_for(release: Path, pattern: str, build: subprocess.Popen, timeout: float = 240) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(release.glob(pattern)):
            return True
        if build.poll() is not None:
            return False
        time.sleep(0.005)
    return False


# The moments: the claim taken, the first data shard, the first reject shard, inside the finalizer (the card
# written, the report written: the manifest comes right after).
MOMENTS = ["runs/claim.json", "data/custom_pairs/shard-*.jsonl.gz", "rejects/*/rejects-*.jsonl.gz",
           "README.md", "report.html"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_9_never_leaves_a_manifest_on_an_incomplete_release(tmp_path, capsys, moment):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl", 2000)
    release = tmp_path / "release"
    build = start_build("--input", str(inputs), "--output", str(release), "--set", "release.shard_rows=100")
    reached = _wait_for(release, moment, build)
    build.send_signal(signal.SIGKILL)
    build.communicate()
    assert reached or build.returncode == 0, f"the build ended before {moment}"
    capsys.readouterr()
    if (release / "manifest.json").exists():
        assert verify_main([str(release)]) == 0
        return
    # The dead run's claim stops the next build until it is broken; its leftovers are the project's and
    # are cleaned up, and the release then verifies.
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release)) == 2
    assert "--break-claim" in capsys.readouterr().err
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release), "--break-claim") == 0
    capsys.readouterr()
    assert verify_main([str(release)]) == 0


# -- errors inside the pipeline: one line, no traceback -------------------------------------------------------------

def test_a_claim_taken_during_the_run_stops_the_commit_with_one_line(tmp_path):
    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl", 2000)
    release = tmp_path / "release"
    build = start_build("--input", str(inputs), "--output", str(release))
    assert _wait_for(release, CLAIM_KEY, build)
    # Another run breaks the claim (--break-claim) while this one is still writing.
    (release / CLAIM_KEY).write_text(json.dumps({"run_id": "0" * 32, "host": "other", "pid": 1,
                                                 "started_utc": "now"}))
    _, stderr = build.communicate(timeout=300)
    assert build.returncode == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and "claim" in lines[0] and "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert not (release / "manifest.json").exists()
    assert json.loads((release / CLAIM_KEY).read_text())["host"] == "other"  # the other run's claim stays


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root, or a user namespace, may mount one); skipped, with the reason, where neither can."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()[:200]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_gives_one_line_and_no_manifest(tmp_path, small_disk):
    inputs = tmp_path / "in" / "pairs.jsonl"
    inputs.parent.mkdir()
    with open(inputs, "w") as handle:  # incompressible text: the shards outgrow the disk
        for index in range(4000):
            handle.write(json.dumps({"query": f"q {index} " + os.urandom(60).hex(),
                                     "document": f"d {index} " + os.urandom(60).hex()}) + "\n")
    release = small_disk / "release"
    build = start_build("--input", str(inputs), "--output", str(release))
    _, stderr = build.communicate(timeout=300)
    assert build.returncode != 0
    lines = error_lines(stderr)
    assert len(lines) == 1 and "No space left" in lines[0] and "Traceback" not in stderr, stderr
    assert not (release / "manifest.json").exists()


def test_objects_not_written_by_this_run_are_named_before_a_commit(tmp_path, s3_env, s3_bucket):
    from pipelines.release.ownership import manifest_entries, mismatched_objects
    from pipelines.release.s3_store import S3Store
    from pipelines.release.store import LocalStore

    inputs = write_pairs(tmp_path / "in" / "pairs.jsonl")
    release = tmp_path / "release"
    assert run_build(*FAST, "--input", str(inputs), "--output", str(release)) == 0
    manifest = json.loads((release / "manifest.json").read_text())
    entries = manifest_entries(manifest)
    assert mismatched_objects(LocalStore(release), entries) == []
    shard = manifest["datasets"]["custom_pairs"]["shards"][0]["key"]
    data = (release / shard).read_bytes()
    (release / shard).write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])  # same size, other bytes
    assert mismatched_objects(LocalStore(release), entries) == [shard]

    # S3: another writer's object (no sha256 metadata of ours, or another one) is told apart by a HEAD.
    (release / shard).write_bytes(data)
    store = S3Store.from_uri(f"s3://{s3_bucket}/verify-before-commit")
    for entry in entries:
        store.put_file(entry["key"], release / entry["key"])
    assert mismatched_objects(store, entries) == []
    s3_env.client().put_object(Bucket=s3_bucket, Key=f"verify-before-commit/{shard}", Body=data)
    assert mismatched_objects(store, entries) == [shard]
