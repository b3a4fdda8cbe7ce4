"""Planning a mixture build (`python -m pipelines.build --mixture FILE`): several sources, one Beam graph, one
release.

The rule for settings (configs/mixtures/README.md):
- each source keeps its own configuration for what is its own: its ``source`` section, its inputs, and the
  per-source stages (``Stage.per_source``: normalize), which run on its pairs before the sources meet;
- every other stage runs once over the union with the *shared* settings: the first source's resolved
  configuration, with the mixture's own ``set:`` over it and ``decontaminate:`` when given. Exact and near
  duplicates are compared across datasets (``exact_dedup.scope`` and ``minhash.scope`` default to ``all``).
  A later source's ``set:`` of a shared key would be silently ignored, so it is refused (one line).
- dataset names are unique across the mixture: checked before the run where the names are known from the
  configuration (the generic sources' ``source.dataset``; a source named twice), and again in the graph.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pipelines.core.errors import UsageError

# Sections the sources keep for themselves; every other section is shared (the first source's + the mixture's).
OWN_SECTIONS = ("source", "download")
# Sections that are settings of stages running on the union.
CROSS_DATASET_DEFAULTS = {"exact_dedup.scope": "all", "minhash.scope": "all"}


def _resolve(base: Path, uri: str) -> str:
    """A path in the mixture file is relative to the file; URIs (s3://, gs://) and absolute paths stay."""
    if "://" in uri or os.path.isabs(os.path.expanduser(uri)):
        return os.path.expanduser(uri)
    return str(base / uri)


def own_sections() -> set[str]:
    """The sections a source keeps: OWN_SECTIONS and those of per-source stages."""
    from filters.registry import stages

    return set(OWN_SECTIONS) | {stage.config_key for stage in stages() if stage.per_source and stage.config_key}


def plan_mixture(args: argparse.Namespace, project: dict[str, Any], default_output: str, refuse_overlap):
    """The BuildPlan of a mixture; ``refuse_overlap`` is the build's check that --output holds no input."""
    from filters.registry import stage_names, stages
    from pipelines.core.config import (WORKERS_BFLOAT16, ConfigError, PipelineConfig, apply_values, load_config,
                                       load_mixture, resolved_dict)
    from pipelines.graph import BuildPlan, SourcePart, embedding_model_info, evaluation_inputs, static_manifest
    from pipelines.release.manifest import MANIFEST_KEY
    from pipelines.release.store import StoreError
    from pipelines.release.stores import open_store
    from pipelines.core.records import RejectPolicy
    from sources.base import InputError, RunContext, describe_inputs, expand_inputs
    from sources.registry import get_source, source_names

    path = Path(args.mixture)
    try:
        mixture = load_mixture(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    base = path.resolve().parent
    where = f"mixture {path}"
    own = own_sections()
    for index, entry in enumerate(mixture.sources):
        if entry.source not in source_names():
            raise UsageError(f"{where}: sources[{index}].source: unknown source {entry.source!r} "
                             f"(one of {', '.join(source_names())})")
        if index:
            for key in entry.set:
                if str(key).split(".")[0] not in own:
                    raise UsageError(f"{where}: sources[{index}].set.{key}: shared stages take the first "
                                     "source's settings; set it on the first source or in the mixture's set")
    unknown_skips = sorted(set(mixture.skip) - set(stage_names()))
    if unknown_skips:
        raise UsageError(f"{where}: skip: unknown stage {unknown_skips[0]!r} (one of {', '.join(stage_names())})")

    loaded = []
    for index, entry in enumerate(mixture.sources):
        source = get_source(entry.source)
        config_file = _resolve(base, entry.config) if entry.config else None
        try:
            config, source_config = load_config(entry.source, source.config_model, config_file, values=entry.set,
                                                workers_bfloat16=getattr(args, "workers_bfloat16", None))
        except ConfigError as exc:
            raise UsageError(f"{where}: sources[{index}]: {exc}") from None
        loaded.append((entry, source, config, source_config))

    # Dataset names known from the configuration: refused before anything runs.
    producers: dict[str, int] = {}
    named: dict[str, int] = {}
    for index, (entry, _, _, source_config) in enumerate(loaded):
        dataset = getattr(source_config, "dataset", None)
        key = f"dataset {dataset!r}" if isinstance(dataset, str) else f"the datasets of source {entry.source!r}"
        table = named if isinstance(dataset, str) else producers
        ident = dataset if isinstance(dataset, str) else entry.source
        if ident in table:
            raise UsageError(f"{where}: sources[{table[ident]}] and sources[{index}] both produce {key}: dataset "
                             "names must be unique across a mixture (set source.dataset, or give both inputs "
                             "to one source)")
        table[ident] = index

    # The shared configuration: the first source's, the cross-dataset defaults, the mixture's set.
    first_config = loaded[0][2]
    tree = resolved_dict(first_config)
    for stage in stages():  # enabled is not part of the resolved dump; keep the first source's choice
        if stage.config_key and not stage.per_source and not stage.enabled(first_config):
            tree[stage.config_key]["enabled"] = False
    apply_values(tree, CROSS_DATASET_DEFAULTS)
    if mixture.decontaminate is not None:
        tree["decontaminate"] = {**mixture.decontaminate.model_dump(mode="json"), "enabled": True,
                                 "inputs": [_resolve(base, uri) for uri in mixture.decontaminate.inputs]}
    try:
        apply_values(tree, mixture.set)
        shared = PipelineConfig.model_validate(
            tree, context={WORKERS_BFLOAT16: getattr(args, "workers_bfloat16", None)})
    except ConfigError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except Exception as exc:  # pydantic's ValidationError, formatted like a config error
        from pipelines.core.config import _format_validation_error

        raise UsageError(f"{where}: set: {_format_validation_error(exc)}") from None

    policy = RejectPolicy.from_config(shared.release)
    skipped = sorted(set(args.skip) | set(mixture.skip)
                     | {stage.name for stage in stages() if not stage.per_source and not stage.enabled(shared)})
    output_uri = args.output or default_output
    parts, described_all, sources_entries, inputs_all = [], [], [], []
    try:
        store = open_store(output_uri)
        if store.exists(MANIFEST_KEY) and not args.overwrite:
            raise UsageError(f"a complete release already exists at {store.uri_for(MANIFEST_KEY)}; "
                             "choose another --output or pass --overwrite to replace it")
        for index, (entry, source, config, source_config) in enumerate(loaded):
            given = ([_resolve(base, uri) for uri in entry.inputs] if entry.inputs is not None
                     else source.default_inputs(source_config, config.download))
            inputs = expand_inputs(given)
            if source.select_inputs is not None:
                inputs = source.select_inputs(inputs, source_config)
            refuse_overlap(output_uri, store, given, inputs)
            read = source.read(inputs, source_config, RunContext(
                source_name=entry.source, policy=policy,
                max_extracted_bytes=config.download.max_extracted_bytes))
            described = describe_inputs(inputs)
            inputs_all.extend(inputs)
            described_all.extend(described)
            parts.append(SourcePart(name=entry.source, config=config, read=read))
            own_config = {key: value for key, value in resolved_dict(config).items() if key in own}
            sources_entries.append({
                "source": entry.source, "weight": entry.weight,
                "inputs": [item["name"] for item in described],
                "config": own_config, "config_sha256": _sha256_json(own_config)})
        evaluation = evaluation_inputs(shared, skipped,
                                       lambda given, files: refuse_overlap(output_uri, store, given, files))
    except (InputError, StoreError) as exc:
        raise UsageError(str(exc)) from None

    model = embedding_model_info(shared.embedding, skipped, "add consistency and negatives to the mixture's skip")
    static = static_manifest(project, "mixture", shared, skipped, described_all, model, evaluation,
                             mixture={"sources": sources_entries})
    licenses = sorted({source.license_id for _, source, _, _ in loaded})
    attributions = [source.attribution for _, source, _, _ in loaded if source.attribution]
    first_source, first_source_config = loaded[0][1], loaded[0][3]
    plan = BuildPlan(source=first_source, source_config=first_source_config, config=shared,
                     inputs=inputs_all, output_uri=output_uri, policy=policy, read=parts[0].read, skipped=skipped,
                     overwrite=args.overwrite, static_manifest=static, parts=parts,
                     license_id=licenses[0] if len(licenses) == 1 else "other",
                     attribution=" ".join(dict.fromkeys(attributions)))
    return plan, described_all


def _sha256_json(value: Any) -> str:
    import hashlib
    import json

    canonical = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
