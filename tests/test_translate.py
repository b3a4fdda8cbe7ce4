"""Offline Dataflow translation: the whole build graph becomes a Dataflow job description, with no network,
no credentials, every stage present, and no secret anywhere in what is written."""

from __future__ import annotations

import gzip
import json
import secrets
import socket
import tarfile
from pathlib import Path

import pytest
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines import translate
from pipelines.core.records import SKIPPABLE_STAGES

REPO = Path(__file__).resolve().parent.parent
# Made up at run time: a literal here would ship inside the project's own sdist (setuptools packs tests/).
SECRET_KEY = "wJalr/" + secrets.token_urlsafe(30)
ACCESS_KEY = "AKIA" + secrets.token_hex(8).upper()
SESSION_TOKEN = "FwoGZXIvYXdz/" + secrets.token_urlsafe(60)

# The graph's label for each skippable stage (graph.stage_transforms): consistency and negatives are one
# composite, EmbeddingStages, labelled "embedding".
STAGE_LABELS = {"normalize": "normalize", "exact_dedup": "exact_dedup", "minhash": "minhash",
                "decontaminate": "decontaminate", "consistency": "embedding", "negatives": "embedding"}
# Reading and writing a release cannot be skipped.
RELEASE_LABELS = ["Read", "WritePairs", "Indexes", "WriteRejects", "Finalize"]


def _dataflow_runner_installed() -> bool:
    try:
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
    except ImportError:
        return False
    return True


# Translating for Dataflow needs Beam's Dataflow runner, which comes with the optional `dataflow` extra.
needs_dataflow = pytest.mark.skipif(
    not _dataflow_runner_installed(),
    reason="the Dataflow runner is not installed (apache-beam[gcp]): pip install -e '.[test,dataflow]'")


def _run(*args: str) -> int:
    try:
        return translate.main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def _guard_network(patch: pytest.MonkeyPatch) -> list:
    """Any attempt to open a connection beyond this machine fails (Python-level sockets: what google-auth,
    the GCS client and boto3 use). Returns the list of attempts."""
    real_connect = socket.socket.connect
    attempts: list = []

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or "/" in host):
            return real_connect(sock, address)
        attempts.append(address)
        raise OSError(f"network access during translation: {address}")

    patch.setattr(socket.socket, "connect", guarded_connect)
    return attempts


@pytest.fixture
def no_network(monkeypatch):
    return _guard_network(monkeypatch)


@pytest.fixture(scope="module")
def translated(shared_data, tmp_path_factory):
    """One translation of the full graph (every stage on, decontaminate too), with S3 keys in the environment."""
    evaluation = tmp_path_factory.mktemp("evaluation") / "eval.jsonl"
    evaluation.write_text('{"text": "How do I brew coffee with a French press?"}\n', encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        patch.setenv("AWS_ENDPOINT_URL", "https://account-id.r2.cloudflarestorage.com")
        attempts = _guard_network(patch)
        out = tmp_path_factory.mktemp("dataflow") / "job.json"
        status = _run("--source", "stackexchange",
                      "--input", str(shared_data / "stackexchange" / "coffee.stackexchange.com"),
                      "--output", "s3://curation-releases/coffee", "--out", str(out),
                      "--setup_file", str(REPO / "pyproject.toml"),
                      "--project", "my-project", "--region", "europe-west4",
                      "--temp_location", "gs://my-dataflow-bucket/tmp",
                      "--machine_type", "n2-highmem-8", "--max_num_workers", "40",
                      "--set", "decontaminate.enabled=true", "--set", f"decontaminate.inputs=[{evaluation}]")
    return status, out, attempts


def _pipeline_proto(out: Path) -> beam_runner_api_pb2.Pipeline:
    staged = list(Path(f"{out.with_suffix('')}.staging").rglob("pipeline.pb"))
    assert len(staged) == 1
    return beam_runner_api_pb2.Pipeline.FromString(staged[0].read_bytes())


@needs_dataflow
def test_translation_is_offline_and_complete(translated):
    status, out, attempts = translated
    assert status == 0
    assert attempts == []
    job = json.loads(out.read_text())
    assert job["type"] == "JOB_TYPE_BATCH"
    environment = job["environment"]
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == "my-project" and options["region"] == "europe-west4"
    # What a real submission would carry: not a dry run, not unauthenticated.
    assert options["dry_run"] is False and options["no_auth"] is False
    pool = environment["workerPools"][0]
    assert pool["machineType"] == "n2-highmem-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 40
    # The project itself ships to the workers as an sdist built from pyproject.toml.
    packages = {package["name"] for package in pool["packages"]}
    assert "workflow.tar.gz" in packages
    sdist = next(Path(f"{out.with_suffix('')}.staging").rglob("workflow.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    for module in ("pipelines/graph.py", "sources/stackexchange.py", "filters/minhash.py",
                   "filters/consistency.py", "pipelines/release/s3_store.py"):
        assert any(name.endswith(module) for name in names), module


@needs_dataflow
def test_every_stage_is_in_the_job_graph(translated):
    _, out, _ = translated
    proto = _pipeline_proto(out)
    transforms = proto.components.transforms
    (root_id,) = proto.root_transform_ids
    top_level = [transforms[child].unique_name for child in transforms[root_id].subtransforms]
    expected = sorted(set(STAGE_LABELS[stage] for stage in SKIPPABLE_STAGES)) + RELEASE_LABELS
    missing = [label for label in expected if label not in top_level]
    assert not missing, f"not in the Dataflow job graph: {missing}; top level: {top_level}"
    # Each stage is a real composite with work inside, not an empty placeholder.
    for label in sorted(set(STAGE_LABELS.values())) + ["Read", "WritePairs"]:
        inner = [t.unique_name for t in transforms.values() if t.unique_name.startswith(label + "/")]
        assert inner, label
    # The readable copy written next to the job is the same graph.
    readable = json.loads(Path(f"{out.with_suffix('')}.pipeline.json").read_text())
    assert len(readable["components"]["transforms"]) == len(transforms)
    # Dataflow runs every transform in a Docker environment (the container Dataflow starts).
    assert all(env.urn == "beam:env:docker:v1" for env in proto.components.environments.values())


@needs_dataflow
def test_no_secret_in_anything_written(translated):
    _, out, _ = translated
    folder = out.parent
    written = [path for path in folder.rglob("*") if path.is_file()]
    assert len(written) >= 5  # job.json, pipeline.json, pipeline.pb, sdist, session, requirements
    for path in written:
        data = path.read_bytes()
        if path.suffix == ".gz":  # the sdist: look inside too
            data += gzip.decompress(data)
        for secret in (SECRET_KEY, ACCESS_KEY, SESSION_TOKEN):
            assert secret.encode() not in data, (path.name, secret[:4])
    options = json.loads(out.read_text())["environment"]["sdkPipelineOptions"]["options"]
    for name, value in options.items():
        assert not (name.startswith("s3_") and value not in (None, False)), name
        assert "secret" not in name.lower(), name


def test_secret_bearing_option_is_refused(tmp_path, capsys, no_network):
    out = tmp_path / "job.json"
    status = _run("--source", "stackexchange", "--input", "unused", "--output", "s3://bucket/x", "--out", str(out),
                  "--s3_secret_access_key", SECRET_KEY)
    assert status == 2
    error = capsys.readouterr().err
    assert "--s3_secret_access_key" in error and SECRET_KEY not in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not out.exists()


def test_local_output_is_refused(tmp_path, capsys, no_network):
    status = _run("--source", "stackexchange", "--input", "unused", "--output", str(tmp_path / "release"),
                  "--out", str(tmp_path / "job.json"))
    assert status == 2
    assert "s3://" in capsys.readouterr().err


def test_secret_scan_finds_a_leak(tmp_path):
    """The last line of defence (the written files are searched for secret values) really finds one."""
    leaky = tmp_path / "job.json"
    leaky.write_text(json.dumps({"options": {"endpoint": f"https://{ACCESS_KEY}:{SECRET_KEY}@host"}}))
    clean = tmp_path / "pipeline.json"
    clean.write_text("{}")
    packed = tmp_path / "workflow.tar.gz"
    packed.write_bytes(gzip.compress(f"token = '{SECRET_KEY}'".encode()))
    secrets = translate.secret_values({"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                                       "AWS_SESSION_TOKEN": "short"})
    assert set(secrets) == {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}
    found = translate.find_secrets([leaky, clean, packed], secrets)
    assert sorted(found) == [(str(leaky), "AWS_ACCESS_KEY_ID"), (str(leaky), "AWS_SECRET_ACCESS_KEY"),
                             (str(packed), "AWS_SECRET_ACCESS_KEY")]


@needs_dataflow
def test_a_secret_slipped_into_an_option_stops_the_translation(shared_data, tmp_path, monkeypatch, capsys,
                                                               no_network):
    """An option whose name looks harmless but whose value is a secret (here a label) is caught by the scan
    of what was written: exit 2, one line naming the variable (not its value), nothing left behind."""
    leaked = "leak" + secrets.token_hex(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", leaked)
    out = tmp_path / "job.json"
    status = _run("--source", "stackexchange",
                  "--input", str(shared_data / "stackexchange" / "coffee.stackexchange.com"),
                  "--output", "s3://bucket/coffee", "--out", str(out), "--skip", "consistency",
                  "--skip", "negatives", "--labels", f"team={leaked}")
    assert status == 2
    error = capsys.readouterr().err
    assert "AWS_SECRET_ACCESS_KEY" in error and leaked not in error
    assert not out.exists() and not Path(f"{out.with_suffix('')}.pipeline.json").exists()
    assert list(tmp_path.iterdir()) == []


@needs_dataflow
def test_auto_backend_is_the_portable_one_for_dataflow_workers(tmp_path, monkeypatch, capsys):
    """Dataflow workers' CPUs are not the launcher's: embedding.backend auto must not pick bfloat16 from the
    launcher's CPU (emulated bfloat16 on a worker without it is slower than float32)."""
    from pipelines.core.errors import UsageError

    seen = []

    def stop_after_reading(args):
        seen.append(args.workers_bfloat16)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(translate, "plan_build", stop_after_reading)
    status = _run("--source", "stackexchange", "--input", "unused", "--output", "s3://bucket/x",
                  "--out", str(tmp_path / "job.json"), "--project", "p", "--region", "r",
                  "--temp_location", "gs://b/tmp")
    assert status == 2 and seen == [False]
    assert "stopped by the test" in capsys.readouterr().err
