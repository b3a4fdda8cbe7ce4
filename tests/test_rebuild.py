"""`python -m pipelines.verify RELEASE --rebuild`: the release built from the cardano sample is reproduced file
for file; a shard changed together with its manifest entry (which the plain checks cannot see) is named; an input
whose bytes changed is named before anything is built; missing inputs and unsafe manifests stop with one line."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipelines.verify import main, verify_release
from tests.helpers import run_build

SITE = "cardano.stackexchange.com"


@pytest.fixture(scope="module")
def built(tmp_path_factory, stackexchange_sample):
    """The bundled cardano sample copied to a dump folder and built (no embedding stages, to keep it fast)."""
    root = tmp_path_factory.mktemp("rebuild")
    dump = root / "dump" / SITE
    dump.mkdir(parents=True)
    for name in ("Posts.xml", "PostLinks.xml"):
        shutil.copyfile(stackexchange_sample / name, dump / name)
    release = root / "release"
    assert run_build("--source", "stackexchange", "--input", str(dump), "--output", str(release),
                     "--skip", "consistency", "--skip", "negatives") == 0
    return dump, release


def _copy(release: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(release, copy)
    return copy


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def test_rebuild_from_the_run_record_gives_the_same_files(built, capsys):
    _dump, release = built
    status, out, err = _run(capsys, str(release), "--rebuild")
    assert status == 0, (out, err)
    assert out == [line for line in out if line.startswith("OK ")] and "the rebuild gives the same files" in out[0]
    assert "warning" not in err  # same commit: byte-identical files expected, and found


def _tamper_consistently(release: Path, key: str) -> None:
    """Changes one character of a shard and updates its manifest entry to match: the plain checks pass."""
    shard = release / key
    text = gzip.decompress(shard.read_bytes()).decode("ascii")
    position = text.index('"document":"') + len('"document":"')
    replacement = "Z" if text[position] != "Z" else "Y"
    data = gzip.compress((text[:position] + replacement + text[position + 1:]).encode("ascii"), mtime=0)
    shard.write_bytes(data)
    manifest_path = release / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for dataset in manifest["datasets"].values():
        for entry in dataset["shards"]:
            if entry["key"] == key:
                entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, ensure_ascii=True, indent=1) + "\n")


def test_rebuild_names_a_shard_changed_with_its_manifest_entry(built, tmp_path, capsys):
    dump, release = built
    copy = _copy(release, tmp_path)
    forged = "data/stackexchange_title_body/shard-00000.jsonl.gz"
    _tamper_consistently(copy, forged)
    assert verify_release(str(copy)) == []  # checksums and schema agree: only a rebuild can tell
    overwritten = "data/stackexchange_duplicates/shard-00000.jsonl.gz"
    (copy / overwritten).write_bytes(gzip.compress(b"{}\n", mtime=0))

    # The inputs given by their parent folder (names matched by path suffix); a Beam option passed through.
    status, out, _err = _run(capsys, str(copy), "--rebuild", "--input", str(dump.parent), "--direct_num_workers", "1")
    assert status == 1
    assert [line for line in out if overwritten in line] == [
        line for line in out if line.startswith(f"FAIL {copy}/{overwritten}: size")]
    rebuild_lines = [line for line in out if line.startswith("FAIL rebuild: ")]
    assert rebuild_lines[0].startswith(f"FAIL rebuild: {forged}: the rebuild gives sha256 ")
    assert "FAIL rebuild: manifest.json: section 'datasets' differs from the rebuild's" in rebuild_lines
    assert not any(overwritten in line for line in rebuild_lines)  # its manifest entry is the true one
    assert len(rebuild_lines) == 2


def test_an_input_whose_bytes_changed_is_named_and_nothing_is_built(built, tmp_path, capsys):
    dump, release = built
    changed = tmp_path / "dump" / SITE
    shutil.copytree(dump, changed)
    with open(changed / "Posts.xml", "ab") as handle:
        handle.write(b"\n")
    status, out, err = _run(capsys, str(release), "--rebuild", "--input", str(changed))
    assert status == 1
    [line] = [line for line in out if line.startswith("FAIL")]
    assert line.startswith(f"FAIL rebuild: input {SITE}/Posts.xml ({changed / 'Posts.xml'}): sha256 ")
    assert "manifest says" in line
    assert "rebuilding" not in err


def test_inputs_that_cannot_be_found_stop_with_one_line(built, tmp_path, capsys):
    _dump, release = built
    copy = _copy(release, tmp_path)
    [record_path] = list((copy / "runs").glob("run-*.json"))
    record = json.loads(record_path.read_text())
    for entry in record["inputs"]:
        entry["uri"] = str(tmp_path / "moved" / entry["name"])
    record_path.write_text(json.dumps(record))
    status, out, err = _run(capsys, str(copy), "--rebuild")
    assert status == 2 and not [line for line in out if line.startswith("FAIL")]
    [line] = err.strip().splitlines()
    assert line.startswith("error: rebuild: input ") and line.endswith("pass --input URI")

    status, _out, err = _run(capsys, str(copy), "--rebuild", "--input", str(tmp_path / "nowhere"))
    assert status == 2 and err.strip() == f"error: rebuild: input not found: {tmp_path / 'nowhere'}"


def test_a_manifest_input_name_outside_the_staging_folder_is_refused(built, tmp_path, capsys):
    _dump, release = built
    copy = _copy(release, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["inputs"][0]["name"] = "../../outside.xml"
    (copy / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, ensure_ascii=True, indent=1) + "\n")
    status, _out, err = _run(capsys, str(copy), "--rebuild")
    assert status == 2
    assert err.strip() == "error: rebuild: manifest.json lists an input named '../../outside.xml', which is not " \
                          "a relative path"
    assert not (tmp_path / "outside.xml").exists()


def test_rebuild_options_need_rebuild(built, capsys):
    _dump, release = built
    with pytest.raises(SystemExit) as exit_info:
        main([str(release), "--input", "x"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main([str(release), "--direct_num_workers", "2"])
    assert "unrecognized arguments: --direct_num_workers 2" in capsys.readouterr().err
