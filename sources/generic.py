"""``--source jsonl | parquet | hf``: bring your own pairs (also the Hugging Face -> contrastors converter).

Each row names its query and document by field: ``source.query_field`` (default ``query``),
``source.document_field`` (default ``document``); dotted paths reach into nested objects (``meta.title``).
``source.id_field`` (default ``id``) is kept as ``provenance.record`` (a row without it is recorded as
``file:line`` or ``file#row``). ``source.dataset`` names the DATASET folder of the release and
``source.license`` goes into every pair's provenance.

- ``jsonl``: JSON lines, plain or gzip; large plain files are read as parallel ranges.
- ``parquet``: one work unit per row group (splittable); only the needed columns are read.
- ``hf``: a dataset saved by ``datasets`` (``save_to_disk``: a Dataset folder, or a DatasetDict folder whose
  ``source.split`` is read), Arrow files from the ``datasets`` cache, or a folder of data files (.parquet,
  .jsonl, .json). Without ``--input``, ``source.name`` (a Hub name or a local path) is loaded with
  ``datasets.load_dataset`` into the download cache and its Arrow files are read. Rows are streamed from the
  Arrow files with pyarrow, so workers need neither ``datasets`` nor a shared disk.

A file whose layout cannot hold the pairs (not JSON lines, not Parquet, no such column) stops the run with one
line; a bad row becomes a reject (``malformed_line``, ``missing_field``, ``bad_field_type``, ``empty_text``,
``oversized_field``, ``invalid_utf8``, ``nul_byte``, ``truncated_input``, ``corrupt_input``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

import apache_beam as beam
from pydantic import Field, field_validator

from pipelines.core.records import RejectPolicy
from sources.base import InputError, InputFile, Source
from sources.readers import (inputs_from_urls, MISSING, PAIR, REJECT, CreateUnits, Emitter, EmitOutcomes, FileUnit, Outcome, RawLine,
                             ReadLines, ReadSection, combine, decompressed_head, get_path, note_skipped, open_raw,
                             parse_json_object, plan_line_units, read_head, require_inputs, skip_file, split_result,
                             text_field)

_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
_SNIFF_RECORDS = 20
_HF_METADATA = {"state.json", "dataset_info.json", "dataset_dict.json"}


class GenericSection(ReadSection):
    dataset: str = "custom_pairs"
    query_field: str = "query"
    document_field: str = "document"
    id_field: str | None = "id"
    license: str = "unspecified"

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, name: str) -> str:
        if not _DATASET_NAME.match(name):
            raise ValueError("must be lower-case letters, digits and underscores (it names a release folder)")
        return name

    @field_validator("query_field", "document_field")
    @classmethod
    def _non_empty(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must name a field")
        return name


class JsonlConfig(GenericSection):
    pass


class ParquetConfig(GenericSection):
    # Rows converted to Python objects at a time inside a row group.
    batch_rows: int = Field(1024, ge=1)


class HfConfig(GenericSection):
    split: str = "train"
    # Without --input: a Hugging Face Hub dataset name (or local path) for datasets.load_dataset.
    name: str | None = None
    # The dataset's configuration (subset) name, for datasets.load_dataset.
    config_name: str | None = None
    batch_rows: int = Field(1024, ge=1)


# --------------------------------------------------------------------------------------------------------------
# Rows.

class PairRows:
    """A record (dict) -> a pair or a reject, by the configured field names. Shared by every generic format."""

    def __init__(self, config: GenericSection):
        self.query_field = config.query_field
        self.document_field = config.document_field
        self.id_field = config.id_field
        self.max_field_chars = config.max_field_chars

    def record_id(self, record: dict[str, Any], fallback: str) -> str:
        if not self.id_field:
            return fallback
        value = get_path(record, self.id_field)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            return fallback  # absent, null, or not a scalar
        return str(value)

    def outcome(self, record: dict[str, Any], location: str, emitter: Emitter, raw: str | None = None,
                **extra: Any) -> Outcome:
        record_id = self.record_id(record, location)
        if emitter.unit.option("split") is not None:
            extra.setdefault("split", emitter.unit.option("split"))
        query, problem = text_field(record, self.query_field, self.max_field_chars)
        document, document_problem = text_field(record, self.document_field, self.max_field_chars)
        problem = problem or document_problem
        if problem is not None:
            if raw is None:
                raw = json.dumps(record, ensure_ascii=False, default=str)[:2000]
            return emitter.reject(problem.reason, record=record_id, detail=problem.detail, raw=raw, **extra)
        return emitter.pair(query=query, document=document, record=record_id, ref=f"{emitter.unit.name}:{location}",
                            **extra)


class JsonLines(PairRows):
    def __call__(self, text: str, raw: RawLine, emitter: Emitter) -> Iterable[Outcome]:
        location = f"{emitter.unit.name}:{raw.line}"
        record, problem = parse_json_object(text)
        if record is None:
            yield emitter.reject("malformed_line", record=location, detail={"error": problem}, raw=text)
            return
        yield self.outcome(record, location, emitter, raw=text)


def sniff_jsonl(head: bytes, where: str, config: GenericSection) -> None:
    """InputError unless the first records are JSON objects and some hold the query and document fields."""
    lines = [line for line in head.split(b"\n") if line.strip()]
    if len(lines) > 1 and not head.endswith(b"\n"):
        lines = lines[:-1]
    if not lines:
        return  # an empty file: nothing to read, nothing to reject
    first, problem = parse_json_object(lines[0].decode("utf-8-sig", "replace"))
    if first is None:
        raise InputError(f"unknown format: {where} is not JSON lines (first line: {problem})")
    seen_fields: set[str] = set()
    for line in lines[:_SNIFF_RECORDS]:
        record, _ = parse_json_object(line.decode("utf-8-sig", "replace"))
        if record is None:
            continue
        seen_fields.update(record)
        if get_path(record, config.query_field) is not MISSING and get_path(record, config.document_field) \
                is not MISSING:
            return
    raise InputError(f"{where}: none of the first records has fields '{config.query_field}' and "
                     f"'{config.document_field}' (found: {', '.join(sorted(seen_fields)[:20])}); set "
                     "source.query_field / source.document_field")


# --------------------------------------------------------------------------------------------------------------
# Columnar files: Parquet row groups and Arrow IPC files.

def _check_columns(columns: list[str], where: str, config: GenericSection) -> list[str]:
    """The columns to read; InputError when the query or document column is absent."""
    for name in (config.query_field, config.document_field):
        if name not in columns and name.split(".")[0] not in columns:
            raise InputError(f"{where}: no column '{name}' (columns: {', '.join(columns[:30])}); set "
                             "source.query_field / source.document_field")
    wanted = [name for name in ((config.query_field, config.document_field)
                                + ((config.id_field,) if config.id_field else ()))]
    return list(dict.fromkeys(name if name in columns else name.split(".")[0] for name in wanted
                              if name in columns or name.split(".")[0] in columns))


def plan_parquet(item: InputFile, config: GenericSection, dataset: str, extra: tuple = ()) -> list[FileUnit]:
    import pyarrow.parquet as pq

    head = read_head(item.uri, 4)
    if head != b"PAR1":
        raise InputError(f"unknown format: {item.uri} is not a Parquet file")
    base = FileUnit(item.uri, item.name, fmt="parquet", dataset=dataset, license=config.license)
    try:
        with open_raw(item.uri) as handle:
            metadata = pq.ParquetFile(handle).metadata
            columns = list(metadata.schema.to_arrow_schema().names)
            groups = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a missing or broken footer
        # No footer, no rows: the file leaves as one reject. It ends in "PAR1" unless it was cut short.
        with open_raw(item.uri) as handle:
            handle.seek(max(item.size - 4, 0))
            complete = handle.read(4) == b"PAR1"
        return [FileUnit(item.uri, item.name, fmt="parquet", dataset=dataset, license=config.license,
                         options=(("error", f"{type(exc).__name__}: {str(exc)[:300]}"),
                                  ("reason", "corrupt_input" if complete else "truncated_input")))]
    read_columns = _check_columns(columns, item.uri, config)
    units, first_row = [], 0
    for index, rows in enumerate(groups):
        units.append(FileUnit(base.uri, base.name, fmt="parquet", dataset=dataset, license=config.license,
                              index=index, ranges=len(groups),
                              options=(("columns", tuple(read_columns)), ("first_row", first_row), ("rows", rows))
                              + extra))
        first_row += rows
    return units


def plan_arrow(item: InputFile, config: GenericSection, dataset: str, extra: tuple = ()) -> FileUnit:
    import pyarrow as pa

    head = read_head(item.uri, 8)
    kind = "arrow_file" if head.startswith(b"ARROW1") else "arrow_stream"
    try:
        with open_raw(item.uri) as handle:
            reader = pa.ipc.open_file(handle) if kind == "arrow_file" else pa.ipc.open_stream(handle)
            columns = list(reader.schema.names)
    except Exception as exc:
        raise InputError(f"unknown format: {item.uri} is not an Arrow file ({str(exc)[:200]})") from None
    read_columns = _check_columns(columns, item.uri, config)
    return FileUnit(item.uri, item.name, fmt=kind, dataset=dataset, license=config.license,
                    options=(("columns", tuple(read_columns)),) + extra)


def read_columnar_unit(unit: FileUnit, source: str, rows: PairRows, *, batch_rows: int = 1024,
                       policy: RejectPolicy, rows_counter=None) -> Iterable[Outcome]:
    """The rows of a Parquet row group or an Arrow file -> outcomes; a read failure leaves one reject."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emitter = Emitter(unit, source, policy)
    error = unit.option("error")
    if error is not None:
        yield emitter.reject(unit.option("reason", "corrupt_input"), record=unit.name, detail={"error": error})
        return
    columns = list(unit.option("columns", ()))
    row = unit.option("first_row", 0)
    read_before = row
    try:
        with open_raw(unit.uri) as handle:
            if unit.fmt == "parquet":
                batches = pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, row_groups=[unit.index],
                                                              columns=columns)
            elif unit.fmt == "arrow_file":
                reader = pa.ipc.open_file(handle)
                batches = (reader.get_batch(index) for index in range(reader.num_record_batches))
            else:
                batches = pa.ipc.open_stream(handle)
            for batch in batches:
                if unit.fmt != "parquet":
                    batch = batch.select(columns)
                for record in batch.to_pylist():
                    if rows_counter is not None:
                        rows_counter.inc()
                    location = f"{unit.name}#{row}"
                    yield rows.outcome(record, location, emitter)
                    row += 1
    except Exception as exc:  # a corrupt page or a cut Arrow stream: keep what was read, record the rest
        detail = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "rows_read": row - read_before}
        if unit.option("rows") is not None:
            detail["rows_expected"] = unit.option("rows")
        reason = "truncated_input" if unit.fmt != "parquet" else "corrupt_input"
        yield emitter.reject(reason, record=f"{unit.name}#{row}", detail=detail)


class _ReadColumnarFn(EmitOutcomes):
    def __init__(self, source: str, rows: PairRows, batch_rows: int, policy: RejectPolicy):
        super().__init__(source)
        self.rows = rows
        self.batch_rows = batch_rows
        self.policy = policy

    def process(self, unit: FileUnit):
        yield from self.emit(read_columnar_unit(unit, self.source, self.rows, batch_rows=self.batch_rows,
                                                policy=self.policy, rows_counter=self.rows_counter))


class ReadColumnar(beam.PTransform):
    def __init__(self, units: list[FileUnit], source: str, rows: PairRows, *, batch_rows: int = 1024,
                 policy: RejectPolicy):
        super().__init__()
        self.units = units
        self.source = source
        self.rows = rows
        self.batch_rows = batch_rows
        self.policy = policy

    def expand(self, root):
        read = (root
                | "Units" >> CreateUnits(self.units)
                | "ReadRows" >> beam.ParDo(_ReadColumnarFn(self.source, self.rows, self.batch_rows,
                                                           self.policy)).with_outputs(REJECT, main=PAIR))
        return split_result(read)

    def run_local(self):
        """The same outcomes in this process, without Beam (tests, debugging)."""
        for unit in self.units:
            yield from read_columnar_unit(unit, self.source, self.rows, batch_rows=self.batch_rows,
                                          policy=self.policy)


# --------------------------------------------------------------------------------------------------------------
# jsonl, parquet.

def _jsonl_units(item: InputFile, config: GenericSection, dataset: str, extra: tuple = ()) -> list[FileUnit]:
    head, compression = decompressed_head(item.uri, 256 * 1024)
    sniff_jsonl(head, item.uri, config)
    unit = FileUnit(item.uri, item.name, fmt="jsonl", dataset=dataset, license=config.license,
                    compression=compression, options=extra)
    return plan_line_units(unit, item.size, config.split_bytes)


def read_jsonl(inputs, source_config: JsonlConfig, context):
    require_inputs(inputs, "jsonl")
    units, skipped = [], []
    for item in inputs:
        if skip_file(item.name, source_config.skip_files):
            skipped.append(item.name)
            continue
        units.extend(_jsonl_units(item, source_config, source_config.dataset))
    note_skipped(context, skipped)
    if not units:
        raise InputError("--source jsonl: every input is a documentation file; nothing to read")
    return ReadLines(units, "jsonl", JsonLines(source_config), max_line_bytes=source_config.max_line_bytes,
                     policy=context.policy)


def read_parquet(inputs, source_config: ParquetConfig, context):
    require_inputs(inputs, "parquet")
    units, skipped = [], []
    for item in inputs:
        if skip_file(item.name, source_config.skip_files) or item.name.endswith("_SUCCESS"):
            skipped.append(item.name)
            continue
        units.extend(plan_parquet(item, source_config, source_config.dataset))
    note_skipped(context, skipped)
    if not units:
        raise InputError("--source parquet: no Parquet files among the inputs")
    return ReadColumnar(units, "parquet", PairRows(source_config), batch_rows=source_config.batch_rows,
                        policy=context.policy)


_download_defaults = inputs_from_urls


# --------------------------------------------------------------------------------------------------------------
# hf.

def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else ""


def _read_json(uri: str) -> Any:
    try:
        return json.loads(read_head(uri, 1 << 20).decode("utf-8"))
    except ValueError:
        raise InputError(f"{uri} is not valid JSON") from None


def select_hf_files(inputs: list[InputFile], split: str) -> tuple[list[InputFile], list[str]]:
    """The data files of the wanted split, in the order ``datasets`` wrote them, and the files left out."""
    by_uri = {item.uri: item for item in inputs}
    dict_files = [item for item in inputs if item.uri.endswith("/dataset_dict.json")
                  or item.uri == "dataset_dict.json"]
    chosen = list(inputs)
    if dict_files:
        root = _parent(dict_files[0].uri)
        splits = _read_json(dict_files[0].uri).get("splits", [])
        if split not in splits:
            raise InputError(f"split '{split}' is not in {root} (splits: {', '.join(splits)}); set source.split")
        prefix = f"{root}/{split}/"
        chosen = [item for item in inputs if item.uri.startswith(prefix)]
    ordered: list[InputFile] = []
    for state in [item for item in chosen if item.uri.endswith("/state.json")]:
        folder = _parent(state.uri)
        for entry in _read_json(state.uri).get("_data_files", []):
            uri = f"{folder}/{entry.get('filename', '')}"
            if uri not in by_uri:
                raise InputError(f"{state.uri} lists {entry.get('filename')}, which is missing")
            ordered.append(by_uri[uri])
    listed = {item.uri for item in ordered}
    for item in chosen:
        base = item.uri.rsplit("/", 1)[-1]
        if item.uri in listed or base in _HF_METADATA or base.endswith(".lock"):
            continue
        ordered.append(item)
    kept = {item.uri for item in ordered}
    left_out = [item.name for item in inputs if item.uri not in kept]
    return ordered, left_out


def _validate_saved_dataset(inputs: list[InputFile], config: HfConfig) -> None:
    """A local save_to_disk folder is opened with ``datasets`` once, to check it and its columns."""
    states = [item for item in inputs if item.uri.endswith("/state.json") and "://" not in item.uri]
    for state in states:
        folder = _parent(state.uri)
        try:
            import datasets

            dataset = datasets.load_from_disk(folder)
        except Exception as exc:  # a folder datasets cannot open is not a saved dataset
            raise InputError(f"cannot open {folder} with datasets.load_from_disk: {str(exc)[:200]}") from None
        columns = list(getattr(dataset, "column_names", []) or [])
        _check_columns(columns, folder, config)


def read_hf(inputs, source_config: HfConfig, context):
    require_inputs(inputs, "hf")
    files, left_out = select_hf_files(inputs, source_config.split)
    chosen_states = [item for item in inputs if item.uri.endswith("/state.json")
                     and any(_parent(item.uri) == _parent(f.uri) for f in files)]
    _validate_saved_dataset(chosen_states, source_config)
    split_extra = (("split", source_config.split),)
    columnar, lines, skipped = [], [], list(left_out)
    for item in files:
        if skip_file(item.name, source_config.skip_files):
            skipped.append(item.name)
            continue
        lower = item.name.lower()
        if lower.endswith(".arrow"):
            columnar.append(plan_arrow(item, source_config, source_config.dataset, split_extra))
        elif lower.endswith(".parquet"):
            columnar.extend(plan_parquet(item, source_config, source_config.dataset, split_extra))
        elif re.search(r"\.jsonl?(\.gz)?$", lower):
            lines.extend(_jsonl_units(item, source_config, source_config.dataset, split_extra))
        else:
            raise InputError(f"unknown format: {item.uri}: hf reads datasets saved by datasets (Arrow), "
                             ".parquet and .jsonl/.json files")
    note_skipped(context, skipped)
    parts = []
    if columnar:
        parts.append(("Columnar", ReadColumnar(columnar, "hf", PairRows(source_config),
                                               batch_rows=source_config.batch_rows,
                                               policy=context.policy)))
    if lines:
        parts.append(("JsonLines", ReadLines(lines, "hf", JsonLines(source_config),
                                             max_line_bytes=source_config.max_line_bytes,
                                             policy=context.policy)))
    if not parts:
        raise InputError("--source hf: no data files among the inputs")
    return combine(parts)


def _hub_unreachable(timeout_s: float) -> str | None:
    import urllib.error
    import urllib.request

    from sources.download import error_reason

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except Exception as exc:  # DNS failure, refused, timed out
        return error_reason(exc)
    return None


def hf_default_inputs(source_config: HfConfig, download_config) -> list[str]:
    """Loads ``source.name`` with ``datasets`` into the download cache and returns its Arrow files."""
    if not source_config.name:
        raise InputError("--source hf needs --input PATH (a dataset saved by datasets, or data files) or "
                         "source.name (a Hugging Face dataset name)")
    cache_dir = os.path.join(os.path.expanduser(getattr(download_config, "cache_dir", "~/.cache/pair-curation")),
                             "hf")
    if not os.path.exists(source_config.name) and not os.environ.get("HF_HUB_OFFLINE"):
        # huggingface_hub retries an unreachable Hub for about half a minute; one quick probe says it sooner.
        problem = _hub_unreachable(min(getattr(download_config, "timeout_s", 60.0), 10.0))
        if problem is not None:
            raise InputError(f"cannot load dataset {source_config.name!r}: the Hugging Face Hub is unreachable "
                             f"({problem}); pass --input PATH (a folder written by save_to_disk, or data files)")
    try:
        import datasets

        dataset = datasets.load_dataset(source_config.name, source_config.config_name, split=source_config.split,
                                        cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown name, missing split: one line
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load dataset {source_config.name!r} (split {source_config.split!r}): "
                         f"{message}; pass --input PATH") from None
    files = [entry["filename"] for entry in dataset.cache_files]
    if not files:
        raise InputError(f"dataset {source_config.name!r} has no Arrow cache files (an in-memory dataset); "
                         "save it with save_to_disk and pass --input PATH")
    return files


SOURCES = {
    "jsonl": Source(name="jsonl", config_model=JsonlConfig, read=read_jsonl,
                    default_inputs=_download_defaults("jsonl"),
                    description="Your own pairs as JSON lines: query/document/id fields by name"),
    "parquet": Source(name="parquet", config_model=ParquetConfig, read=read_parquet,
                      default_inputs=_download_defaults("parquet"),
                      description="Your own pairs as Parquet: query/document/id columns by name"),
    "hf": Source(name="hf", config_model=HfConfig, read=read_hf, default_inputs=hf_default_inputs,
                 description="A Hugging Face datasets dataset (saved folder, cache files, or Hub name)"),
}
