"""A PaliGemma-style vision-language backbone whose last hidden states condition an action expert.

`VisionLanguageBackbone` loads a Hugging Face PaliGemma checkpoint (PaliGemma 1 or 2: model_type
"paligemma") from a local directory only, with the tokenizer (and, when present, the image
processor's mean/std) from the same directory, and turns camera images + instructions into one
token sequence per sample, pi0-style:

    [cam_1 image tokens] ... [cam_K image tokens] <bos> instruction "\\n" <pad> ... <pad>

The text part always has `max_text_tokens` positions (instructions are truncated to fit), so every
batch has the same N = K * num_image_tokens + max_text_tokens and `valid` is False only at the
padding. All tokens form one bidirectional prefix (PaliGemma's prefix-LM mask: token_type_ids 0),
so image tokens see the instruction too. Only the last observation frame of each camera is used.

Preprocessing is done here in torch (no PIL round trip): bilinear, antialiased resize to the
vision tower's image size, then (x - mean) / std with the directory's preprocessor mean/std
(SigLIP's 0.5/0.5, i.e. [-1, 1], when the directory has none). Tokenisation is cached per
instruction string. With `freeze` the weights get no gradient, the model stays in eval mode under
`.train()` and the forward pass runs without autograd; tokens are returned in float32 either way,
so a float32 head can sit on a bfloat16 backbone.

A tiny random checkpoint for tests and offline trials: `vla.testing.vlm`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla.errors import PolicyError

SUPPORTED_MODEL_TYPES = ("paligemma",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# SigLIP's normalisation, used when the directory has no preprocessor config
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def _read_image_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from preprocessor_config.json, or the image_processor block of processor_config.json."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            cfg = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PolicyError(f"{file}: not readable JSON ({e}); fix or delete the file") from e
        cfg = cfg.get("image_processor", cfg) if isinstance(cfg, dict) else {}
        if not cfg.get("do_normalize", True):
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if "image_mean" in cfg and "image_std" in cfg:
            mean, std = cfg["image_mean"], cfg["image_std"]
            mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
            std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise PolicyError(f"{file}: image_mean/image_std must be 3 numbers (std > 0), got {mean}/{std}")
            return tuple(mean), tuple(std)
    return DEFAULT_MEAN, DEFAULT_STD


def _load_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise PolicyError(
            f"{path}: no config.json, so this is not a Hugging Face model directory; point `path` at a local "
            f"PaliGemma checkpoint (config.json, *.safetensors, tokenizer files), e.g. one saved with save_pretrained"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PolicyError(f"{path}/config.json cannot be read as a transformers config ({e})") from e
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise PolicyError(
            f"{path}: model_type {config.model_type!r} is not supported as a vision-language backbone; "
            f"use a PaliGemma-style checkpoint (model_type one of {SUPPORTED_MODEL_TYPES})"
        )
    return config


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise PolicyError(
            f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer into the "
            f"same directory (tokenizer.save_pretrained(path))"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PolicyError(
            f"{path}: the tokenizer files cannot be loaded ({e}); re-save the tokenizer with save_pretrained"
        ) from e


class VisionLanguageBackbone(nn.Module):
    """Images of every camera + instructions -> the VLM's last hidden states (B, N, out_dim) and a valid mask."""

    def __init__(
        self,
        path: str | Path,
        camera_keys: Sequence[str],
        freeze: bool = True,
        max_text_tokens: int = 48,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise PolicyError(
                f"{path}: vision-language model directory does not exist; download/convert a PaliGemma "
                f"checkpoint to a local directory first (this toolkit never loads from the hub)"
            )
        if isinstance(camera_keys, str) or not camera_keys:
            raise PolicyError(f"camera_keys must be a non-empty sequence of camera names, got {camera_keys!r}")
        if max_text_tokens < 2:
            raise PolicyError(f"max_text_tokens must be >= 2 (<bos> and at least one token), got {max_text_tokens}")
        config = _load_config(path)
        self.tokenizer = _load_tokenizer(path)
        from transformers import PaliGemmaForConditionalGeneration
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-tensor bar in every training log; missing-key warnings stay
        try:
            full = PaliGemmaForConditionalGeneration.from_pretrained(
                path, local_files_only=True, dtype=dtype if dtype is not None else "auto"
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise PolicyError(f"{path}: the PaliGemma weights cannot be loaded ({e}); re-save the model") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        # The LM head is tied to the input embeddings and unused (no generation): keep the base model only.
        self.model = full.model
        self.path = str(path)
        self.camera_keys = tuple(camera_keys)
        self.freeze = freeze
        self.max_text_tokens = int(max_text_tokens)
        self.out_dim = int(config.text_config.hidden_size)
        vision = config.vision_config
        self.image_size = int(vision.image_size)
        self.num_image_tokens = (self.image_size // int(vision.patch_size)) ** 2
        self.n_tokens = len(self.camera_keys) * self.num_image_tokens + self.max_text_tokens
        self.image_token_id = int(config.image_token_index)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)
        self.bos_token_id = self.tokenizer.bos_token_id  # None: the tokenizer has no <bos>, add none
        mean, std = _read_image_stats(path)
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._text_cache: dict[str, tuple[torch.Tensor, int]] = {}
        self._lock = threading.Lock()
        self.tokenizer_calls = 0  # cache misses, for tests and logs
        if freeze:
            self.model.requires_grad_(False)
            # A frozen VLM is reloaded from `path` whenever the policy is built, so checkpoints, EMA
            # shadows and resume states leave its (billions of) weights out instead of copying them.
            self._frozen_keys = {f"model.{k}" for k in self.model.state_dict()}
            self.register_state_dict_post_hook(_drop_frozen_weights)
            self.register_load_state_dict_post_hook(_allow_missing_frozen_weights)
        self.model.eval()  # dropout off unless fine-tuning asks for train mode

    def train(self, mode: bool = True) -> VisionLanguageBackbone:
        super().train(mode)
        if self.freeze:
            self.model.eval()  # a frozen backbone is a fixed feature extractor: no dropout
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # -- text ---------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> tuple[torch.Tensor, int]:
        """One instruction -> (max_text_tokens,) ids padded with <pad>, and how many are real."""
        cached = self._text_cache.get(text)
        if cached is not None:
            return cached
        # PaliGemma's prompt: <bos> + prompt + "\n" (the newline separates prefix from any suffix)
        ids = self.tokenizer(text.strip() + "\n", add_special_tokens=False)["input_ids"]
        if self.bos_token_id is not None:
            ids = [int(self.bos_token_id), *ids]
        ids = ids[: self.max_text_tokens]  # too-long instructions lose their tail
        row = torch.full((self.max_text_tokens,), self.pad_token_id, dtype=torch.long)
        row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        with self._lock:
            self.tokenizer_calls += 1
            if len(self._text_cache) > 100_000:
                self._text_cache.clear()  # an unbounded instruction stream: start over rather than grow forever
            self._text_cache[text] = (row, len(ids))
        return row, len(ids)

    def _text_inputs(self, language: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, lengths = zip(*(self._tokenize(str(t)) for t in language), strict=True)
        ids = torch.stack(rows)
        valid = torch.arange(self.max_text_tokens) < torch.tensor(lengths).unsqueeze(1)
        return ids, valid

    # -- images -------------------------------------------------------------------------------
    def _pixels(self, images: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
        """(B * K, 3, S, S) normalised pixels, batch-major then camera order (how PaliGemma scatters them)."""
        frames = []
        for key in self.camera_keys:
            if key not in images:
                raise PolicyError(f"images has no camera {key!r}; the backbone expects {list(self.camera_keys)}")
            x = images[key]
            if x.ndim == 5:
                x = x[:, -1]  # (B, n_obs, 3, H, W): the VLM sees the latest frame
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] != batch:
                raise PolicyError(
                    f"images[{key!r}] has shape {tuple(images[key].shape)}; expected ({batch}, n_obs, 3, H, W)"
                )
            x = x.to(self.image_mean.device, torch.float32)
            if x.shape[-2:] != (self.image_size, self.image_size):  # cameras may differ in size
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
            frames.append(x)
        x = torch.stack(frames, dim=1).flatten(0, 1)
        x = (x - self.image_mean) / self.image_std
        return x.to(self.dtype)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, images: Mapping[str, torch.Tensor], language: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """images: camera -> (B, n_obs, 3, H, W) in [0, 1] (last frame used); language: B strings.

        Returns tokens (B, N, out_dim) float32 and valid (B, N) bool, N = K * num_image_tokens + max_text_tokens.
        """
        if isinstance(language, str):
            raise PolicyError("language must be a sequence of B instruction strings, not one string")
        batch = len(language)
        device = self.image_mean.device
        pixels = self._pixels(images, batch)
        text_ids, text_valid = self._text_inputs(language)
        n_img = len(self.camera_keys) * self.num_image_tokens
        image_ids = torch.full((batch, n_img), self.image_token_id, dtype=torch.long)
        input_ids = torch.cat([image_ids, text_ids], dim=1).to(device)
        valid = torch.cat([torch.ones(batch, n_img, dtype=torch.bool), text_valid], dim=1).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            out = self.model(
                input_ids=input_ids,
                pixel_values=pixels,
                attention_mask=valid.long(),
                # all zeros: the whole sequence is one bidirectional prefix (required by PaliGemma in train mode)
                token_type_ids=torch.zeros_like(input_ids),
                use_cache=False,
            )
        return out.last_hidden_state.float(), valid


def _drop_frozen_weights(module: VisionLanguageBackbone, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] in module._frozen_keys]:
        del state_dict[key]


def _allow_missing_frozen_weights(module: VisionLanguageBackbone, incompatible: Any) -> None:
    """Loading a checkpoint without the frozen weights is expected (they come from `path`)."""
    frozen = module._frozen_keys
    keep = [k for k in incompatible.missing_keys if not any(k == f or k.endswith("." + f) for f in frozen)]
    incompatible.missing_keys[:] = keep
