"""`python -m pipelines.translate ...`: write the Dataflow job description of a build, offline.

Same arguments as ``pipelines.build`` plus ``--out FILE``. Nothing is submitted and nothing is contacted: no
Google credentials, no GCS, no S3. The graph is built exactly as a build builds it, then Beam's own
DataflowRunner translates it (``--dry_run``), and Beam's own Dataflow client writes the job description
(``create_job_description``), with one patch point: what it would upload to the GCS staging location is
written under a local folder instead. Outputs:

  OUT                   the Dataflow Job message as JSON (what ``--template_location`` writes): environment,
                        worker pools and machine type, container image, SDK pipeline options, staged packages
  OUT_STEM.pipeline.json  the portable Beam pipeline Dataflow runs (Runner v2), transforms and their labels
  OUT_STEM.staging/     what would be uploaded: pipeline.pb, the project's sdist with --setup_file, ...

The inputs are planned (hashed, validated, their first bytes sniffed for compression) where they are, so they
must be readable here: local files make the translation fully offline, and the job then names their local
paths (fine for checking the graph, packaging and options; a job to launch reads gs:// inputs, which
``python -m pipelines.build --runner DataflowRunner`` plans with the launcher's credentials). The release
destination (``--output s3://...``) is written into the job but never contacted here.

A pipeline option that would carry a secret into the job (``--s3_secret_access_key`` and the like) is refused:
S3 keys reach the workers from their environment, never from the job. As a last check, the written files are
searched for the values of the secret environment variables (AWS_SECRET_ACCESS_KEY, ...) and the command
fails, deleting them, if one appears.

Exit status: 0 written; 2 bad command line, configuration, input or option (one line on stderr).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.build import make_parser, plan_build
from pipelines.cli import quiet_logging, refuse_secret_options, run_command
from pipelines.core.errors import UsageError

# Stand-ins for the Google Cloud options a Dataflow job requires, used when the command line has none: the
# description is complete and readable, and the names say what to replace before a real submission.
PLACEHOLDER_OPTIONS = {
    "project": "replace-with-project",
    "region": "us-central1",
    "temp_location": "gs://replace-with-bucket/tmp",
}

# Environment variables whose values must never appear in what is written (checked after writing).
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY",
                   "AZURE_STORAGE_CONNECTION_STRING", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GOOGLE_API_KEY")
# Shorter values are too likely to occur by chance (and are not real keys).
_MIN_SECRET_LENGTH = 8

REMOTE_SCHEMES = ("s3", "gs")


def make_translate_parser() -> argparse.ArgumentParser:
    parser = make_parser()
    parser.prog = "python -m pipelines.translate"
    parser.description = ("Write the Dataflow job description of a build without submitting it, without "
                          "credentials and without network: " + (parser.description or ""))
    parser.epilog = """\
examples:
  python -m pipelines.translate --source stackexchange \\
      --input ../shared/data/stackexchange/cardano.stackexchange.com \\
      --output s3://my-bucket/releases/cardano --out dataflow/job.json \\
      --project my-project --region us-central1 --temp_location gs://my-bucket/tmp \\
      --sdk_container_image us-docker.pkg.dev/my-project/images/pair-curation:0.1.0 \\
      --machine_type n2-highmem-8 --max_num_workers 50
  python -m pipelines.translate --source quora --input quora_duplicate_questions.tsv \\
      --output s3://my-bucket/releases/quora --out job.json --setup_file ./pyproject.toml

Beam options are passed on as for `python -m pipelines.build`; --runner defaults to DataflowRunner and
--project / --region / --temp_location to placeholders. Options that carry credentials are refused.
"""
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the job description (JSON); the Beam pipeline goes next to it "
                             "as FILE_STEM.pipeline.json and the staged files under FILE_STEM.staging/")
    return parser


def secret_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The secret environment variables that are set (name -> value), long enough to search for."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in SECRET_ENV_VARS
            if len(environ.get(name, "")) >= _MIN_SECRET_LENGTH}


def find_secrets(paths: list[Path], secrets: dict[str, str]) -> list[tuple[str, str]]:
    """(file, variable name) for every secret value found in a file's bytes (inside too, for gzip files such
    as the staged sdist)."""
    found = []
    for path in paths:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data += gzip.decompress(data)
        for name, value in secrets.items():
            if value.encode("utf-8") in data:
                found.append((str(path), name))
    return found


def _require_remote_output(output: str | None) -> str:
    if not output:
        raise UsageError("--output is required: the s3:// or gs:// destination the Dataflow workers write to")
    if urlsplit(output).scheme not in REMOTE_SCHEMES:
        raise UsageError(f"--output {output!r}: a Dataflow job cannot write to a folder of this machine; give "
                         "s3://bucket/prefix or gs://bucket/prefix")
    return output


def dataflow_options(beam_args: list[str]):
    """PipelineOptions for an offline translation: DataflowRunner, placeholders where required options are
    absent, ``dry_run`` and ``no_auth`` so that Beam validates and translates without credentials or GCS."""
    from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions, StandardOptions,
                                                      TestOptions)

    refuse_secret_options(beam_args)
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    runner = standard.runner or "DataflowRunner"
    if runner.rsplit(".", 1)[-1] not in ("DataflowRunner", "TestDataflowRunner"):
        raise UsageError(f"--runner {runner}: pipelines.translate writes Dataflow job descriptions only; run "
                         "other runners with python -m pipelines.build")
    standard.runner = "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    for name, placeholder in PLACEHOLDER_OPTIONS.items():
        if not getattr(cloud, name):
            setattr(cloud, name, placeholder)
    for name in ("temp_location", "staging_location"):
        value = getattr(cloud, name)
        if value and not value.startswith("gs://"):
            raise UsageError(f"--{name} {value!r}: Dataflow stages through GCS; give gs://bucket/path")
    if cloud.template_location:
        raise UsageError("--template_location uploads to GCS; pipelines.translate writes the template to --out")
    # The artifact cache looks up GCS before staging: no network here.
    cloud.enable_artifact_caching = False
    # Translate without submitting, and without the GCS checks option validation makes otherwise (the
    # soft-delete probe of temp_location, the default bucket lookup).
    options.view_as(TestOptions).dry_run = True
    cloud.no_auth = True
    return options


def _local_staging_client(options, staging_root: str, local_root: Path):
    """Beam's Dataflow client, with uploads to gs://BUCKET/PATH written to LOCAL_ROOT/BUCKET/PATH instead."""
    from apache_beam.runners.dataflow.internal import apiclient

    class LocalStagingClient(apiclient.DataflowApplicationClient):
        def stage_file(self, gcs_or_local_path, file_name, stream, mime_type="application/octet-stream",
                       total_size=None):
            remote = f"{gcs_or_local_path.rstrip('/')}/{file_name}"
            parts = urlsplit(remote)
            target = local_root / parts.netloc / parts.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                shutil.copyfileobj(stream, handle)

    return LocalStagingClient(options, staging_root)


def translate(argv: list[str]) -> dict[str, Any]:
    """Plan, build and translate; write the job files. Returns a summary (paths, transform labels)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions
    from google.protobuf import json_format

    from pipelines.graph import build_graph

    parser = make_translate_parser()
    args, beam_args = parser.parse_known_args(argv)
    from pipelines.cli_options import check_unknown_options

    check_unknown_options(beam_args, parser)
    output = _require_remote_output(args.output)
    options = dataflow_options(beam_args)
    out = Path(args.out)
    if out.suffix != ".json":
        raise UsageError(f"--out {args.out!r}: give a .json file name")

    with tempfile.TemporaryDirectory(prefix="translate-") as placeholder_release:
        # Plan against an empty local folder: plan_build checks its destination for an existing manifest, and
        # the real one (S3 or GCS) must not be contacted when translating.
        args.output = placeholder_release
        # Dataflow workers' CPUs are not this machine's: embedding.backend auto takes the portable onnx.
        args.workers_bfloat16 = False
        plan, _ = plan_build(args)
    plan.output_uri = output

    pipeline = beam.Pipeline(options=options)
    build_graph(pipeline, plan)
    result = pipeline.run()
    job = result.job

    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    staging_dir = Path(f"{stem}.staging")
    pipeline_json = Path(f"{stem}.pipeline.json")
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    staging_dir.mkdir(parents=True)

    client = _local_staging_client(job.options, job.root_staging_location, staging_dir)
    # The job's own options must read as a real submission would: not a dry run, with authentication.
    job.options.view_as(TestOptions).dry_run = False
    job.options.view_as(GoogleCloudOptions).no_auth = False
    client.create_job_description(job)

    out.write_text(job.json() + "\n", encoding="utf-8")
    pipeline_json.write_text(json_format.MessageToJson(job.proto_pipeline, sort_keys=True) + "\n",
                             encoding="utf-8")

    written = [out, pipeline_json] + sorted(p for p in staging_dir.rglob("*") if p.is_file())
    leaked = find_secrets(written, secret_values())
    if leaked:
        out.unlink(missing_ok=True)
        pipeline_json.unlink(missing_ok=True)
        shutil.rmtree(staging_dir, ignore_errors=True)
        names = ", ".join(sorted({name for _, name in leaked}))
        raise UsageError(f"the job description would contain the value of {names}; nothing was written")

    components = job.proto_pipeline.components
    root_ids = list(job.proto_pipeline.root_transform_ids)
    top_level = [components.transforms[t].unique_name for t in root_ids]
    if len(top_level) == 1:  # Beam nests the user's transforms under one unnamed root
        top_level = [components.transforms[t].unique_name
                     for t in components.transforms[root_ids[0]].subtransforms]
    return {"job": str(out), "pipeline": str(pipeline_json), "staging": str(staging_dir),
            "job_name": job.proto.name, "transforms": len(components.transforms), "top_level": top_level,
            "stages": plan.active_stages, "output": output,
            "staged_files": [str(p.relative_to(staging_dir)) for p in written[2:]]}


def _translate_command(argv: list[str]) -> int:
    quiet_logging()
    try:
        summary = translate(argv)
    except (ValueError, RuntimeError, OSError) as exc:
        # Option validation and staging raise these with the reason on the first line.
        raise UsageError(f"cannot translate: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}"
                         ) from None
    print(f"Dataflow job {summary['job_name']}: {summary['transforms']} transforms; stages: "
          f"{', '.join(summary['stages']) or 'none'}; writes {summary['output']}", file=sys.stderr)
    print(f"  job description: {summary['job']}\n  pipeline graph:  {summary['pipeline']}\n"
          f"  staged files:    {summary['staging']}/ ({len(summary['staged_files'])})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_translate_command, argv)


if __name__ == "__main__":
    sys.exit(main())
