"""Assembles the Beam graph: read -> stages -> shards + rejects -> indexes -> card, report -> manifest (last).

Stages are composite PTransforms that take and give pair records and send what they drop to rejects. The
funnel is counted inside the graph (not from runner metrics, which differ between runners), and the
finalizer refuses to write a manifest when rows are unaccounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from filters.registry import stage_names, stages
from pipelines.release import pair_map as pair_map_lib
from pipelines.core.config import PipelineConfig, config_hash, resolved_dict
from pipelines.core.errors import UsageError
from pipelines.core.progress import CountProgress
from pipelines.core.records import RejectPolicy
from pipelines.release import card, input_rows as input_rows_lib, manifest as manifest_lib
from pipelines.release.location import (CONTRASTORS_CONFIG_KEY, contrastors_config_bytes, dataset_weights,
                                        location_for)
from pipelines.release.stats import ReleaseStats
from pipelines.release import ownership
from pipelines.release.store import AlreadyExists, StoreError
from pipelines.release.stores import open_store
from pipelines.release.writer import (JSON, WriteDatasetIndexes, WriteShards, file_entry, json_bytes,
                                      summarize_rejects)
from pipelines.release.report import render_report
from pipelines.core.schema import CARD_KEY, REPORT_KEY
from sources.base import InputFile, Source


@dataclass
class SourcePart:
    """One source of a mixture build: its read transform and its own configuration (for per-source stages)."""

    name: str
    config: PipelineConfig
    read: beam.PTransform


@dataclass
class BuildPlan:
    source: Source
    source_config: Any
    config: PipelineConfig
    inputs: list[InputFile]
    output_uri: str
    # What rejects may carry, decided once from release.reject_texts; every source and stage gets this one.
    policy: RejectPolicy
    # The source's read transform, planned once by the build (inputs validated, units planned).
    read: beam.PTransform
    skipped: list[str] = field(default_factory=list)
    overwrite: bool = False
    # Everything reproducible the manifest says about the run: project, source, config, inputs, model.
    static_manifest: dict[str, Any] = field(default_factory=dict)
    # A mixture build: every source read and run through its per-source stages, then the union through the
    # shared stages (``config``). Empty: one source, ``read``.
    parts: list[SourcePart] = field(default_factory=list)
    license_id: str | None = None
    attribution: str | None = None
    # The run holding the destination's claim (None: no claim, e.g. a translated job) and the keys that an
    # earlier manifest or run record says the project wrote: the only ones clean-up may remove.
    run_id: str | None = None
    owned_keys: list[str] = field(default_factory=list)

    @property
    def active_stages(self) -> list[str]:
        return [stage for stage in stage_names() if stage not in self.skipped]



def embedding_model_info(embedding_config, skipped: list[str], skip_hint: str) -> dict[str, Any] | None:
    """The embedding model's identity for the manifest when a stage that needs the model runs, else None. A
    model that cannot be loaded is a usage error naming the config key; ``skip_hint`` says how to go without."""
    if not any(stage.needs_model for stage in stages() if stage.name not in skipped):
        return None
    try:
        from filters.embedding import model_info  # torch / onnxruntime: only when a stage needs the model
    except ImportError as exc:
        raise UsageError(f"the embedding stages are not available ({exc}); {skip_hint}") from None
    try:
        return model_info(embedding_config)
    except (OSError, ValueError) as exc:
        raise UsageError(f"config key 'embedding.model': cannot load {embedding_config.model!r}: "
                         f"{str(exc).splitlines()[0][:200]}") from None

def evaluation_inputs(config: PipelineConfig, skipped: list[str], refuse_overlap) -> list[dict[str, Any]]:
    """The evaluation texts decontaminate compares against, described (uri, name, bytes, sha256); none when the
    stage is skipped. ``refuse_overlap(given, files)`` stops a build whose output overlaps one of them."""
    from sources.base import describe_inputs, expand_inputs

    files = expand_inputs(config.decontaminate.inputs) if "decontaminate" not in skipped else []
    refuse_overlap(list(config.decontaminate.inputs), files)
    return describe_inputs(files)


def _identities(described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The URI is where a file was read on this machine; the name is what provenance records.
    return [{key: item[key] for key in ("name", "bytes", "sha256")} for item in described]


def static_manifest(project: dict[str, Any], source: str, config: PipelineConfig, skipped: list[str],
                    described: list[dict[str, Any]], model: dict[str, Any] | None,
                    evaluation: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The part of the manifest fixed before the run, for one source and for a mixture (``extra``: its
    ``mixture`` section)."""
    static = {"project": project, "source": source, **extra, "skipped_stages": skipped,
              "config": resolved_dict(config), "config_sha256": config_hash(config),
              "inputs": _identities(described), "model": model}
    if evaluation:  # the evaluation texts decontaminate compared against
        static["evaluation_inputs"] = _identities(evaluation)
    return static


def stage_transforms(plan: BuildPlan) -> list[tuple[str, beam.PTransform]]:
    """The active stages in registry order, as (label, transform). Stages that share a step (embed-and-search)
    become one transform, labelled by the step, where the first of them stands."""
    active = plan.active_stages
    transforms: list[tuple[str, beam.PTransform]] = []
    for stage in stages():
        if stage.name not in active or (plan.parts and stage.per_source):
            continue  # a mixture ran its per-source stages before the union
        if stage.shared is None:
            transforms.append((stage.name, stage.transform(plan.config, plan.policy)))
        elif stage.shared.name not in {label for label, _ in transforms}:
            members = tuple(other.name for other in stages() if other.shared == stage.shared and other.name in active)
            transforms.append((stage.shared.name, stage.shared.transform(plan.config, plan.policy, members)))
    return transforms


class _Finalize(beam.DoFn):
    """Writes the dataset card and report, removes stale objects, then commits manifest.json last."""

    def __init__(self, plan_static: dict[str, Any], output_uri: str, active_stages: list[str], overwrite: bool,
                 license_id: str, attribution: str, pretty_name: str, run_id: str | None = None,
                 owned_keys: list[str] | None = None):
        self.run_id = run_id
        self.owned_keys = set(owned_keys or ())
        self.static = plan_static
        self.output_uri = output_uri
        self.active_stages = active_stages
        self.overwrite = overwrite
        self.license_id = license_id
        self.attribution = attribution
        self.pretty_name = pretty_name

    def process(self, _, read_counts, reject_counts, dataset_summaries, reject_summaries, stage_reports,
                samples, stats, input_rows=(), input_outcomes=(), dataset_owners=(), pair_map=()):
        store = open_store(self.output_uri)
        self._check_claim(store)
        if "mixture" in self.static:
            self.static = _with_mixture_datasets(self.static, list(dataset_owners))
        final_rows = {summary["dataset"]: summary["rows"] for summary in dataset_summaries}
        funnel = manifest_lib.compute_funnel(dict(read_counts), list(reject_counts), self.active_stages,
                                             final_rows)
        # What became of every input row (sources that account for them): inputs[i].rows_by_outcome.
        static, funnel = input_rows_lib.apply_input_rows(self.static, funnel, list(input_rows))
        warnings = empty_input_warnings(input_outcomes)
        if warnings:
            funnel["warnings"] = warnings
        location = location_for(self.output_uri)
        files: list[dict[str, Any]] = []
        draft = manifest_lib.build_manifest(static=static, funnel=funnel, dataset_summaries=dataset_summaries,
                                            reject_summaries=reject_summaries, stage_reports=stage_reports,
                                            files=files, location=location)
        # contrastors' data config: the trainer reads the release as it is, from where it is published.
        contrastors_yaml = contrastors_config_bytes(location, draft["datasets"], dataset_weights(static))
        store.put_bytes(CONTRASTORS_CONFIG_KEY, contrastors_yaml, content_type="application/yaml")
        files.append(file_entry(CONTRASTORS_CONFIG_KEY, contrastors_yaml))
        the_map = pair_map[0] if pair_map else None
        report_html = _render_report(draft, samples, stats, self.license_id, self.attribution, the_map)
        if report_html is not None:
            report_bytes = report_html.encode("utf-8")
            store.put_bytes(REPORT_KEY, report_bytes, content_type="text/html; charset=utf-8")
            files.append(file_entry(REPORT_KEY, report_bytes))
        card_bytes = card.render_card(draft, license_id=self.license_id, attribution=self.attribution,
                                      pretty_name=self.pretty_name, has_report=report_html is not None,
                                      map_projection=the_map["projection"] if the_map else "").encode("utf-8")
        store.put_bytes(CARD_KEY, card_bytes, content_type="text/markdown; charset=utf-8")
        files.append(file_entry(CARD_KEY, card_bytes))
        final = manifest_lib.build_manifest(static=static, funnel=funnel, dataset_summaries=dataset_summaries,
                                            reject_summaries=reject_summaries, stage_reports=stage_reports,
                                            files=files, location=location)
        # Leftovers of an earlier, interrupted or differently configured run of this project are removed before
        # the commit; objects the project did not write are never touched, and a release they would sit in
        # (where readers and verify look) is not committed.
        wanted = manifest_lib.release_keys(final)
        present = ownership.row_keys(store)
        foreign = present - wanted - self.owned_keys
        if foreign:
            raise StoreError(f"{len(foreign)} object(s) not written by this project appeared under data/ or "
                             f"rejects/ of {store.uri} during the run ({ownership.sample_keys(foreign)}); left "
                             "alone, release not committed")
        for key in sorted((present - wanted) & self.owned_keys):
            store.delete(key)
        # Every object the manifest vouches for must hold the bytes this run wrote (another writer, or a
        # broken claim, would show here).
        changed = ownership.mismatched_objects(store, ownership.manifest_entries(final))
        if changed:
            raise StoreError(f"{len(changed)} release object(s) at {store.uri} are not what this run wrote "
                             f"({ownership.sample_keys(changed)}); release not committed")
        self._check_claim(store)
        manifest_bytes = json_bytes(final)
        try:
            store.put_bytes(manifest_lib.MANIFEST_KEY, manifest_bytes, content_type=JSON,
                            if_none_match=not self.overwrite)
        except AlreadyExists:
            raise AlreadyExists(f"{store.uri_for(manifest_lib.MANIFEST_KEY)} appeared during the run; "
                                "not overwritten (use --overwrite)") from None
        yield final


    def _check_claim(self, store) -> None:
        if self.run_id is not None and not ownership.claim_is_ours(store, self.run_id):
            raise ownership.ClaimHeld(f"this run's claim on {store.uri} was removed or taken by another run "
                                      "(--break-claim?); release not committed")


def _input_of(record: dict[str, Any]) -> str:
    provenance = record.get("provenance") or {}
    return str(provenance.get("input") or "")


def _rows_of(reject: dict[str, Any]) -> int:
    # A collapsed run of unparseable lines is one reject standing for many lines.
    lines = (reject.get("detail") or {}).get("lines")
    return lines if isinstance(lines, int) and lines > 0 else 1


def empty_input_warnings(input_outcomes) -> list[str]:
    """A warning for each input that gave no pairs but rejects (a wrong file, encoding or format, say),
    from ((input, "pair" or reject reason), rows) counts of the read stage."""
    by_input: dict[str, dict[str, int]] = {}
    for (name, outcome), count in input_outcomes:
        by_input.setdefault(name, {})[outcome] = by_input.setdefault(name, {}).get(outcome, 0) + count
    warnings = []
    for name, outcomes in sorted(by_input.items()):
        if not name or outcomes.get("pair"):
            continue
        rejected = sum(outcomes.values())
        top = sorted(outcomes.items(), key=lambda item: (-item[1], item[0]))[:3]
        reasons = ", ".join(f"{reason}={count}" for reason, count in top)
        warnings.append(f"input {name} gave no pairs: {rejected} row(s) rejected ({reasons})")
    return warnings


def _render_report(draft_manifest: dict[str, Any], samples: list[dict[str, Any]], stats: list[dict[str, Any]],
                   license_id: str, attribution: str, pair_map: dict[str, Any] | None = None) -> str:
    # matplotlib is a dependency: a missing one fails the build loudly instead of dropping report.html.
    return render_report(draft_manifest, samples, stats, license_id=license_id, attribution=attribution,
                         pair_map=pair_map)


def _with_mixture_datasets(static: dict[str, Any], owners: list[tuple[str, int]]) -> dict[str, Any]:
    """Each mixture source's datasets into the manifest; a dataset two sources produce is refused (their pairs
    would share one folder and one weight)."""
    by_dataset: dict[str, set[int]] = {}
    for dataset, index in owners:
        by_dataset.setdefault(dataset, set()).add(index)
    clashes = {dataset: sorted(indexes) for dataset, indexes in by_dataset.items() if len(indexes) > 1}
    if clashes:
        dataset, indexes = sorted(clashes.items())[0]
        raise ValueError(f"dataset {dataset!r} is produced by mixture sources {indexes}: dataset names must be "
                         "unique across a mixture")
    sources = [dict(entry) for entry in static["mixture"]["sources"]]
    for index, entry in enumerate(sources):
        entry["datasets"] = sorted(dataset for dataset, owners_of in by_dataset.items() if index in owners_of)
    return {**static, "mixture": {**static["mixture"], "sources": sources}}


def _pair_map(plan: BuildPlan, pairs, candidate_rejects, query_vectors: list):
    """The report's map: kept pairs and those the consistency filter dropped, the smallest ids, placed in 2-D
    (pipelines.release.pair_map) by the query vectors the embedding stages made, when they ran."""
    embedding = plan.config.embedding if query_vectors else None
    kept = pairs | "MapKept" >> beam.Map(lambda pair: pair_map_lib.map_entry(pair, dropped=False))
    dropped = (candidate_rejects
               | "MapDropped" >> beam.Filter(lambda r: r["stage"] == "consistency" and isinstance(r.get("query"), str))
               | "MapDroppedEntry" >> beam.Map(lambda r: pair_map_lib.map_entry(r, dropped=True)))
    candidates = (kept, dropped) | "MapCandidates" >> beam.Flatten()
    chosen = candidates | "MapSample" >> beam.combiners.Top.Of(pair_map_lib.MAX_POINTS, key=lambda e: e["id"],
                                                               reverse=True)
    if embedding is not None:
        # Only the sample's vectors travel to the map: a filter against the sample's query keys.
        wanted = chosen | "MapWantedQueries" >> beam.Map(
            lambda entries: frozenset(pair_map_lib.query_keys(entries, embedding.query_prefix)))
        vectors = (query_vectors | "MapQueryVectors" >> beam.Flatten()
                   | "MapSampleVectors" >> beam.Filter(lambda item, keys: item[0] in keys,
                                                       keys=beam.pvalue.AsSingleton(wanted)))
    else:
        vectors = pairs.pipeline | "MapNoVectors" >> beam.Create([])
    total = candidates | "MapCandidatesCount" >> beam.combiners.Count.Globally()
    return chosen | "Map" >> beam.Map(
        lambda entries, total, vectors: {
            **pair_map_lib.build_map(entries, embedding, dict(vectors)), "candidates": total,
            "sampled": total > len(entries)},
        total=beam.pvalue.AsSingleton(total), vectors=beam.pvalue.AsList(vectors))


def _count_by(pcoll, label: str, key_fn):
    return (pcoll
            | f"{label}Key" >> beam.Map(lambda element: (key_fn(element), 1))
            | f"{label}Sum" >> beam.CombinePerKey(sum))


def _read_mixture(pipeline: beam.Pipeline, plan: BuildPlan):
    """Every source of a mixture read and run through its per-source stages (its own settings), then united.
    Returns (read output like a source's, read pairs for counting, rejects of the per-source stages, reports,
    (dataset, source index) pairs)."""
    per_source = [stage for stage in stages() if stage.per_source and stage.name in plan.active_stages]
    pairs_parts, read_pairs, rejects, row_rejects, input_rows, owners, reports = [], [], [], [], [], [], []
    for index, part in enumerate(plan.parts):
        label = f"Source{index}"
        read = pipeline | f"{label}Read" >> part.read
        pairs = read["pairs"]
        read_pairs.append(pairs)
        rejects.append(read["rejects"])
        if read.get("row_rejects") is not None:
            row_rejects.append(read["row_rejects"])
        if read.get("input_rows") is not None:
            input_rows.append(read["input_rows"])
        owners.append(pairs | f"{label}Datasets" >> beam.Map(lambda pair, i=index: (pair["dataset"], i))
                      | f"{label}DistinctDatasets" >> beam.Distinct())
        for stage in per_source:
            if not stage.enabled(part.config):
                continue
            result = pairs | f"{label}{stage.name}" >> stage.transform(part.config, plan.policy)
            pairs = result["pairs"]
            rejects.append(result["rejects"])
            if "report" in result:
                reports.append(result["report"]
                               | f"{label}{stage.name}Report" >> beam.Map(lambda r, i=index: {
                                   **r, "stage": f"{r.get('stage', stage.name)}[{i}]"}))
        pairs_parts.append(pairs)
    united = {
        "pairs": pairs_parts | "UnitePairs" >> beam.Flatten(),
        "rejects": rejects | "UniteSourceRejects" >> beam.Flatten(),
        "row_rejects": (row_rejects | "UniteRowRejects" >> beam.Flatten()) if row_rejects else None,
        "input_rows": (input_rows | "UniteInputRows" >> beam.Flatten()) if input_rows else None,
    }
    read_all = read_pairs | "UniteReadPairs" >> beam.Flatten()
    dataset_owners = owners | "UniteDatasetOwners" >> beam.Flatten()
    return united, read_all, reports, dataset_owners


def build_graph(pipeline: beam.Pipeline, plan: BuildPlan):
    """Adds the whole build to ``pipeline``; returns the PCollection holding the final manifest."""
    report_parts = []
    if plan.parts:
        read, read_pairs, report_parts, dataset_owners = _read_mixture(pipeline, plan)
    else:
        read = pipeline | "Read" >> plan.read
        read_pairs = read["pairs"]
        dataset_owners = pipeline | "NoDatasetOwners" >> beam.Create([])
    pairs = read["pairs"]
    reject_parts = [read["rejects"]]
    # Rows that could not be read are rejects on disk but not pair candidates: the funnel leaves them out and
    # the input-row accounting counts them.
    row_rejects = read.get("row_rejects")
    input_rows = read.get("input_rows") or (pipeline | "NoInputRows" >> beam.Create([]))
    read_counts = _count_by(read_pairs, "ReadCount", lambda pair: pair["dataset"])
    read_rejects = ([read["rejects"], row_rejects] | "ReadAndRowRejects" >> beam.Flatten()
                    if row_rejects is not None else read["rejects"])
    input_outcomes = ((read_pairs | "InputPairKey" >> beam.Map(lambda pair: ((_input_of(pair), "pair"), 1)),
                       read_rejects | "InputRejectKey" >> beam.Map(
                           lambda reject: ((_input_of(reject), reject["reason"]), _rows_of(reject))))
                      | "InputOutcomes" >> beam.Flatten()
                      | "InputOutcomeSum" >> beam.CombinePerKey(sum))

    query_vectors = []
    for label, transform in stage_transforms(plan):
        # Which stage is working: a stderr line when its first pair arrives, then its count every few seconds.
        _ = pairs | f"{label}Progress" >> beam.ParDo(CountProgress(label, "pairs"))
        result = pairs | label >> transform
        pairs = result["pairs"]
        reject_parts.append(result["rejects"])
        if "report" in result:
            report_parts.append(result["report"])
        if "query_vectors" in result:
            query_vectors.append(result["query_vectors"])

    candidate_rejects = reject_parts | "AllRejects" >> beam.Flatten()
    rejects = (([candidate_rejects, row_rejects] | "WithRowRejects" >> beam.Flatten()) if row_rejects is not None
               else candidate_rejects)
    release = plan.config.release
    shard_infos = pairs | "WritePairs" >> WriteShards(plan.output_uri, "data", release.shard_rows,
                                                      release.gzip_level)
    dataset_summaries = shard_infos | "Indexes" >> WriteDatasetIndexes(plan.output_uri, release.gzip_level,
                                                                       location_for(plan.output_uri))
    reject_infos = rejects | "WriteRejects" >> WriteShards(plan.output_uri, "rejects", release.reject_shard_rows,
                                                           release.gzip_level)
    reject_summaries = summarize_rejects(reject_infos)
    rows_to_write = ((pairs, rejects) | "RowsToWrite" >> beam.Flatten()
                     | "CountRowsToWrite" >> beam.combiners.Count.Globally())
    _ = ((shard_infos, reject_infos) | "ShardsWritten" >> beam.Flatten()
         | "WriteProgress" >> beam.ParDo(CountProgress("write", "rows", weight_key="rows"),
                                         total=beam.pvalue.AsSingleton(rows_to_write)))
    reject_counts = (_count_by(candidate_rejects, "RejectCount", lambda r: (r["dataset"], r["stage"], r["reason"]))
                     | "FlattenRejectCount" >> beam.MapTuple(lambda key, n: (*key, n)))
    stage_reports = (report_parts or [pipeline | "NoReports" >> beam.Create([])]) | "Reports" >> beam.Flatten()
    samples = _samples(pairs, rejects)
    pair_map = _pair_map(plan, pairs, candidate_rejects, query_vectors)
    stats = (pairs, rejects) | "Stats" >> ReleaseStats()

    finalize = _Finalize(plan.static_manifest, plan.output_uri, plan.active_stages, plan.overwrite,
                         plan.license_id or plan.source.license_id,
                         release.attribution or plan.attribution or plan.source.attribution,
                         release.pretty_name, plan.run_id, plan.owned_keys)
    return (pipeline
            | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize" >> beam.ParDo(
                finalize,
                read_counts=beam.pvalue.AsList(read_counts),
                reject_counts=beam.pvalue.AsList(reject_counts),
                dataset_summaries=beam.pvalue.AsList(dataset_summaries),
                reject_summaries=beam.pvalue.AsList(reject_summaries),
                stage_reports=beam.pvalue.AsList(stage_reports),
                samples=beam.pvalue.AsList(samples),
                stats=beam.pvalue.AsList(stats),
                input_rows=beam.pvalue.AsList(input_rows),
                input_outcomes=beam.pvalue.AsList(input_outcomes),
                dataset_owners=beam.pvalue.AsList(dataset_owners),
                pair_map=beam.pvalue.AsList(pair_map)))


SAMPLES_PER_GROUP = 5


def _samples(pairs, rejects):
    """A few kept pairs per dataset and rejects per (stage, reason) for the report: the smallest ids, so the
    choice is deterministic and unbiased by content."""
    kept = (pairs
            | "SampleKeptKey" >> beam.Map(lambda pair: (("kept", pair["dataset"], ""), pair))
            | "SampleKept" >> beam.combiners.Top.PerKey(SAMPLES_PER_GROUP, key=lambda p: p["id"], reverse=True))
    dropped = (rejects
               | "SampleRejectKey" >> beam.Map(lambda r: (("rejected", r["stage"], r["reason"]), r))
               | "SampleRejected" >> beam.combiners.Top.PerKey(SAMPLES_PER_GROUP, key=lambda r: r["id"],
                                                                reverse=True))
    return ((kept, dropped)
            | "Samples" >> beam.Flatten()
            | "SampleDicts" >> beam.MapTuple(lambda key, items: {"group": list(key), "items": items}))
