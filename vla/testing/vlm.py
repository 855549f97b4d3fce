"""A tiny random PaliGemma checkpoint, built offline, to exercise `VisionLanguageBackbone` without a download.

`build_tiny_paligemma(directory)` writes what a real checkpoint directory holds: config.json and
model.safetensors (SigLIP vision tower 32 px / patch 8 -> 16 image tokens, 2-layer Gemma with
width 32), a byte-level BPE tokenizer trained on a few robot instructions (so any text tokenises,
no <unk>) with PaliGemma's special tokens, and a SigLIP preprocessor config. Weights are random
(seeded): good for shapes, loading and gradient plumbing, meaningless as features.
"""

from __future__ import annotations

from pathlib import Path

import torch

# PaliGemma's special-token layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3; <image> is added after the vocab
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")
_CORPUS = (
    "pick up the red block and put it in the drawer",
    "open the top drawer of the cabinet",
    "close the microwave",
    "put the bowl on the plate",
    "turn on the stove and put the moka pot on it",
    "push the blue block to the left",
    "stack the green cube on the yellow cube",
    "place the mug in the basket",
)


def _tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def build_tiny_paligemma(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random PaliGemma (model, tokenizer, preprocessor config) into `directory`; return it."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(vocab_size=320)
    vocab_size = len(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    hidden = 32
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_token_id,
        vocab_size=vocab_size,
        projection_dim=hidden,
        hidden_size=hidden,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaliGemmaForConditionalGeneration(config)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(directory)
    n_image_tokens = (vision.image_size // vision.patch_size) ** 2  # real checkpoints record it here too
    SiglipImageProcessor(
        size={"height": vision.image_size, "width": vision.image_size}, image_seq_length=n_image_tokens
    ).save_pretrained(directory)
    return directory
