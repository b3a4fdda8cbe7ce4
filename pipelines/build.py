"""`python -m pipelines.build --source NAME ...`: build one auditable release of contrastive pairs.

Exit status: 0 when the release is complete (manifest committed); 2 for a bad command line, configuration or
input (one line on stderr naming the key, value or path); 1 when the pipeline itself fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.cli import PROJECT_ERROR_LINE, CommandParser, quiet_logging, refuse_secret_options, run_command
from pipelines.core.errors import PairCurationError, PipelineError, UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent

EPILOG = """\
examples:
  python -m pipelines.build --source stackexchange \\
      --input ../shared/data/stackexchange/cardano.stackexchange.com --output releases/cardano
  python -m pipelines.build --source quora --input quora_duplicate_questions.tsv \\
      --set consistency.top_k=3 --set negatives.num_negatives=5
  python -m pipelines.build --source jsonl --input pairs.jsonl --set source.dataset=my_pairs \\
      --skip consistency --skip negatives --output s3://my-bucket/releases/my_pairs
  python -m pipelines.build --mixture configs/mixtures/example.yaml --output releases/mixture
  python -m pipelines.build --source stackexchange --input 'dumps/*.stackexchange.com' \\
      --direct_num_workers 2 --direct_running_mode multi_processing

Every flag not listed above is a Beam pipeline option (--runner DataflowRunner --project P --region R
--temp_location gs://..., --direct_num_workers N ...). The default runner is DirectRunner.
S3 destinations take their endpoint and keys from the standard AWS environment variables or profile
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE), never from flags.
"""


def make_parser() -> argparse.ArgumentParser:
    from filters.registry import stage_names
    from sources.registry import source_names

    parser = CommandParser(
        prog="python -m pipelines.build",
        description="Build an auditable release of contrastive training pairs from a public dump: read, "
                    "normalize, exact dedup, MinHash near-dup removal, embedding-consistency filter, hard "
                    "negatives, then shards + rejects + manifest in a local folder or an S3 bucket.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", choices=source_names(), metavar="NAME",
                       help=f"which reader: {', '.join(source_names())}")
    which.add_argument("--mixture", metavar="FILE",
                       help="build one release from several sources (YAML: configs/mixtures/README.md); "
                            "--config, --input and --set are then given per source in FILE")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML configuration (default: configs/NAME.yaml), e.g. --config my.yaml")
    parser.add_argument("--input", action="append", default=[], metavar="URI",
                        help="a file, glob, folder or archive, local or s3:// / gs://; repeatable. Without it "
                             "the source's public dump is downloaded into the cache where it has an address")
    parser.add_argument("--output", metavar="URI",
                        help="release destination: a local folder (default releases/NAME) or "
                             "s3://bucket/prefix on any S3-compatible store (R2, MinIO, SeaweedFS, AWS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config key, typed as YAML, e.g. --set minhash.threshold=0.85; "
                             "repeatable")
    parser.add_argument("--skip", action="append", default=[], choices=stage_names(), metavar="STAGE",
                        help=f"leave a stage out (recorded in the manifest): {', '.join(stage_names())}; "
                             "repeatable")
    parser.add_argument("--break-claim", action="store_true",
                        help="remove a claim on --output left by a build that died (killed, machine lost); "
                             "never needed otherwise: a build releases its claim when it ends")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing release at --output (otherwise a complete release there is "
                             "never overwritten)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines on stderr while the pipeline runs (Beam metrics still count)")
    return parser


def project_identity() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        project_version = version("pair-curation")
    except PackageNotFoundError:
        project_version = "0.0.0+unknown"
    commit = "unknown"
    if (REPO_ROOT / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if dirty:
                commit += "-dirty"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return {"name": "pair-curation", "version": project_version, "commit": commit}


def project_errors() -> tuple[type[BaseException], ...]:
    """The project's own one-line errors (a bad store, input or configuration), wherever they are raised."""
    from pipelines.core.config import ConfigError
    from pipelines.release.store import StoreError
    from sources.base import InputError

    return UsageError, ConfigError, StoreError, InputError


def project_error_message(exc: BaseException) -> str | None:
    """The one line of a project error that stopped the pipeline: the exception itself (DirectRunner), or its
    text inside the runner's wrapper (multi-process and remote runners pass tracebacks as text)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, project_errors()):
            text = str(current).strip()
            return _strip_step(text.splitlines()[0] if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    found = PROJECT_ERROR_LINE.findall(str(exc))
    return _strip_step(found[-1]) if found else None


def _strip_step(line: str) -> str:
    return re.sub(r" \[while running '[^']*'\]$", "", line.strip())[:500]


def plan_build(args: argparse.Namespace):
    """Everything decided before the graph runs. Raises UsageError (exit 2) for anything the user must fix."""
    if getattr(args, "mixture", None):
        if args.config or args.input or args.overrides:
            raise UsageError("--mixture takes --config, --input and --set per source inside the mixture file")
        from pipelines.mixture import plan_mixture

        return plan_mixture(args, project_identity(),
                            str(REPO_ROOT / "releases" / f"mixture-{Path(args.mixture).stem}"), refuse_overlap)
    from filters.registry import stages
    from pipelines.core.config import ConfigError, load_config
    from pipelines.graph import BuildPlan, embedding_model_info, evaluation_inputs, static_manifest
    from pipelines.release.manifest import MANIFEST_KEY
    from pipelines.release.store import StoreError
    from pipelines.release.stores import open_store
    from pipelines.core.records import RejectPolicy
    from sources.base import InputError, RunContext, describe_inputs, expand_inputs
    from sources.registry import get_source

    source = get_source(args.source)
    try:
        config, source_config = load_config(args.source, source.config_model, args.config, args.overrides,
                                            workers_bfloat16=getattr(args, "workers_bfloat16", None))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    policy = RejectPolicy.from_config(config.release)
    # A stage is left out by --skip NAME or by its section's enabled: false; the manifest records both alike.
    skipped = sorted(set(args.skip) | {stage.name for stage in stages() if not stage.enabled(config)})
    output_uri = args.output or str(REPO_ROOT / "releases" / args.source)
    try:
        inputs_given = args.input or source.default_inputs(source_config, config.download)
        inputs = expand_inputs(inputs_given)
        if source.select_inputs is not None:
            inputs = source.select_inputs(inputs, source_config)  # files it does not read are not hashed
        store = open_store(output_uri)
        refuse_overlap(output_uri, store, inputs_given, inputs)
        if store.exists(MANIFEST_KEY) and not args.overwrite:
            raise UsageError(f"a complete release already exists at {store.uri_for(MANIFEST_KEY)}; "
                             "choose another --output or pass --overwrite to replace it")
        # The source plans its read once, here: it validates its inputs (right kind of files) before anything
        # is hashed or run, and the graph applies this very transform.
        read = source.read(inputs, source_config, RunContext(
            source_name=args.source, policy=policy, max_extracted_bytes=config.download.max_extracted_bytes))
        described = describe_inputs(inputs)
        evaluation = evaluation_inputs(config, skipped,
                                       lambda given, files: refuse_overlap(output_uri, store, given, files))
    except (InputError, StoreError) as exc:
        raise UsageError(str(exc)) from None

    model = embedding_model_info(config.embedding, skipped, "pass --skip consistency --skip negatives")
    static = static_manifest(project_identity(), args.source, config, skipped, described, model, evaluation)
    plan = BuildPlan(source=source, source_config=source_config, config=config, inputs=inputs,
                     output_uri=output_uri, policy=policy, read=read, skipped=skipped, overwrite=args.overwrite,
                     static_manifest=static)
    return plan, described


def _location(uri: str) -> tuple[str, str] | None:
    """(scheme or "file", path with "/" separators) for overlap checks; None where it cannot be known."""
    import glob
    import os

    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        return scheme, "/" + "/".join(part for part in rest.split("/") if part)
    uri = os.path.expanduser(uri)
    if glob.has_magic(uri):  # a glob reads somewhere under its fixed leading folders
        fixed = []
        for part in uri.split(os.sep):
            if glob.has_magic(part):
                break
            fixed.append(part)
        uri = os.sep.join(fixed) or os.sep
    return "file", os.path.realpath(uri)


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def refuse_overlap(output_uri: str, store, given: list[str], inputs) -> None:
    """A build never writes where it reads: refuse an --output that holds an input or lies inside one
    (after resolving symlinks; s3:// prefixes compared by bucket and key path)."""
    output = _location(getattr(store, "uri", output_uri))
    if output is None:
        return
    for uri in list(given) + [item.uri for item in inputs]:
        where = _location(uri)
        if where is None or where[0] != output[0]:
            continue
        if _inside(where[1], output[1]) or _inside(output[1], where[1]):
            raise UsageError(f"--output {output_uri} overlaps the input {uri} (one is inside the other): a "
                             "build never writes where it reads; choose another --output")


LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner", "PrismRunner")


def runs_here(options) -> bool:
    """Whether the job's workers are this machine (a local runner, the default) rather than remote ones."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1] in LOCAL_RUNNERS


def pipeline_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    return options


def run_record_key(started: float, run_id: str) -> str:
    return f"runs/run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{run_id[:8]}.json"


def write_run_record(store, key: str, record: dict[str, Any]) -> None:
    """What is not reproducible (when, where, how, which keys this run wrote) goes to runs/, outside the
    manifest."""
    store.put_bytes(key, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode(),
                    content_type="application/json")


def claim_destination(plan, store, args, described, argv: list[str], started: float) -> tuple[str, dict[str, Any]]:
    """Claim --output for this run, decide which objects there the project wrote, and record the run.

    Raises UsageError (exit 2) when another run holds the claim or when objects the project did not write sit
    where the release would put its own; other objects are left alone and named on stderr."""
    from pipelines.release import ownership
    from pipelines.release.manifest import MANIFEST_KEY

    run_id = ownership.new_run_id()
    try:
        ownership.acquire_claim(store, run_id, break_claim=args.break_claim)
    except ownership.ClaimHeld as exc:
        raise UsageError(str(exc)) from None
    try:
        previous = ownership.read_small_json(store, MANIFEST_KEY)
        present = {key for key in store.list_keys() if not key.startswith("runs/")}
        rows_present = ownership.row_keys(store)
        adopted = ownership.adopt_unfinished(store, present)
        owned = ownership.owned_keys(store, previous) | adopted
        release_files = {MANIFEST_KEY, "README.md", "report.html", "contrastors.yaml"}
        blocking = (rows_present | (present & release_files)) - owned
        if blocking:
            raise UsageError(f"{store.uri} holds {len(blocking)} object(s) this project did not write where the "
                             f"release puts its own ({ownership.sample_keys(blocking)}); nothing was changed: "
                             "move them or choose another --output")
        if (previous is not None or store.exists(MANIFEST_KEY)) and not args.overwrite:
            raise UsageError(f"a complete release already exists at {store.uri_for(MANIFEST_KEY)}; "
                             "choose another --output or pass --overwrite to replace it")
        others = present - owned - blocking
        if others:
            print(f"note: left alone at {store.uri}: {len(others)} object(s) not written by this project "
                  f"({ownership.sample_keys(others)})", file=sys.stderr)
        record = {
            "run_id": run_id,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "host": platform.node(),
            "python": platform.python_version(),
            "argv": argv,
            "inputs": [{"name": d["name"], "uri": d["uri"]} for d in described],
            "preexisting": sorted(present),
            "prior_manifest_keys": sorted(ownership.manifest_keys(previous)),
            "adopted": sorted(adopted),
            "left_alone": sorted(others),
            "finished": False,
        }
        key = run_record_key(started, run_id)
        write_run_record(store, key, record)
        if previous is not None or store.exists(MANIFEST_KEY):
            # Uncommit the old release first (--overwrite): while we rebuild, the destination is visibly
            # incomplete.
            store.delete(MANIFEST_KEY)
        plan.run_id = run_id
        plan.owned_keys = sorted(owned)
        return key, record
    except BaseException:
        ownership.release_claim(store, run_id)
        raise


def finish_run(store, key: str, record: dict[str, Any], status: int) -> None:
    """Record what this run wrote (its manifest's keys, and every key outside runs/ that appeared while it held
    the claim), then release the claim. Best effort: the run's own outcome is already decided."""
    from pipelines.release import ownership
    from pipelines.release.manifest import MANIFEST_KEY
    from pipelines.release.store import StoreError

    try:
        manifest = ownership.read_small_json(store, MANIFEST_KEY) if status == 0 else None
        now = {key for key in store.list_keys() if not key.startswith("runs/")}
        wrote = (now - set(record["preexisting"])) | ownership.manifest_keys(manifest)
        record.update(finished=True, status=status, wrote=sorted(wrote))
        write_run_record(store, key, record)
    except StoreError as exc:
        print(f"warning: could not complete the run record {key}: {exc}", file=sys.stderr)
    finally:
        try:
            ownership.release_claim(store, record["run_id"])
        except StoreError as exc:
            print(f"warning: could not release the claim on {store.uri}: {exc}", file=sys.stderr)


def _build_command(argv: list[str]) -> int:
    quiet_logging()
    parser = make_parser()
    try:
        args, beam_args = parser.parse_known_args(argv)
        from pipelines.cli_options import check_unknown_options

        # S3 keys reach workers through their environment; an option would write them into the job.
        refuse_secret_options(beam_args)
        check_unknown_options(beam_args, parser)
        from pipelines.core.progress import set_quiet

        set_quiet(args.quiet)  # before planning: a download's progress bar honours it too
        options = pipeline_options(beam_args)
        # embedding.backend auto asks this machine's CPU only when this machine runs the job.
        args.workers_bfloat16 = None if runs_here(options) else False
        plan, described = plan_build(args)
    except PairCurationError:
        raise
    except (ValueError, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        raise UsageError(f"bad pipeline option: {exc}") from None

    import apache_beam as beam

    from pipelines.graph import build_graph
    from pipelines.release.manifest import MANIFEST_KEY, format_funnel
    from pipelines.release.store import StoreError
    from pipelines.release.stores import open_store

    from pipelines.core import progress

    progress.reset()
    started = time.time()
    store = open_store(plan.output_uri)
    try:
        record_key, record = claim_destination(plan, store, args, described, argv, started)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    status = 1
    try:
        print(f"building {args.source or 'mixture'} release -> {plan.output_uri} "
              f"({len(plan.inputs)} input file(s), stages: {', '.join(plan.active_stages) or 'none'})",
              file=sys.stderr)
        try:
            with beam.Pipeline(options=options) as pipeline:
                build_graph(pipeline, plan)
        except Exception as exc:  # the runner wraps worker errors; report the first line, not a traceback
            known = project_error_message(exc)
            if known is not None:
                logging.debug("pipeline failure", exc_info=True)
                raise UsageError(known) from None
            message = str(exc).strip().splitlines()
            detail = next((line for line in reversed(message) if "Error" in line or "Exception" in line),
                          message[-1] if message else type(exc).__name__)
            logging.debug("pipeline failure", exc_info=True)
            raise PipelineError(f"pipeline failed: {detail[:500]}") from None

        if not store.exists(MANIFEST_KEY):
            raise PipelineError("pipeline finished but no manifest was committed: the release is incomplete")
        manifest = json.loads(store.get_bytes(MANIFEST_KEY))
        print(format_funnel(manifest["funnel"]))
        for warning in manifest["funnel"].get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"release: {plan.output_uri} ({time.time() - started:.1f} s)")
        status = 0
        return 0
    except PairCurationError as exc:
        status = exc.exit_status
        raise
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        finish_run(store, record_key, record, status)


def main(argv: list[str] | None = None) -> int:
    return run_command(_build_command, argv)


if __name__ == "__main__":
    sys.exit(main())
