"""Language encoders: the packaged MiniLM, a local CLIP text tower, the per-instruction cache."""

from __future__ import annotations

import pytest
import torch

from vla.policies.modules.language import (
    CLIPTextEncoder,
    LanguageEncoderError,
    get_language_encoder,
)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP text tower with a word-level tokenizer, saved like a real checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

    words = ["pick", "up", "the", "red", "blue", "cup", "open", "close", "drawer", "put", "in", "on", "block"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "<bos>": 2, "<eos>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="[PAD]", unk_token="[UNK]"
    )
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPTextModelWithProjection(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_tiny_clip_from_local_path(tiny_clip_dir):
    enc = get_language_encoder("clip", str(tiny_clip_dir))
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 16  # the projected embedding
    assert get_language_encoder("clip", str(tiny_clip_dir)) is enc  # shared, loaded once
    out = enc(["pick up the red cup", "open the drawer", "pick up the red cup", ""])
    assert out.shape == (4, 16) and out.dtype == torch.float32
    assert torch.equal(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    assert torch.count_nonzero(out[3]) == 0  # "" = no goal = zeros


def test_clip_embeddings_match_transformers_directly(tiny_clip_dir):
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    enc = CLIPTextEncoder(str(tiny_clip_dir))
    model = CLIPTextModelWithProjection.from_pretrained(tiny_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        ref = model(**tok(["close the drawer"], return_tensors="pt")).text_embeds
    torch.testing.assert_close(enc(["close the drawer"]), ref)


def test_cache_encodes_each_instruction_once(tiny_clip_dir):
    enc = CLIPTextEncoder(str(tiny_clip_dir))
    enc(["put the block in the drawer", "open the drawer"])
    assert enc.calls == 2
    enc(["open the drawer", "open the drawer", "", "put the block in the drawer"])
    assert enc.calls == 2  # all cached (and "" never reaches the model)
    enc(["close the drawer"])
    assert enc.calls == 3


def test_clip_needs_an_existing_local_path(tmp_path):
    with pytest.raises(LanguageEncoderError, match="local directory"):
        get_language_encoder("clip", None)
    with pytest.raises(LanguageEncoderError, match="does not exist"):
        CLIPTextEncoder(str(tmp_path / "missing"))
    with pytest.raises(LanguageEncoderError, match="unknown language encoder"):
        get_language_encoder("t5")


@pytest.mark.slow
def test_packaged_minilm_loads_offline():
    enc = get_language_encoder("minilm")
    assert enc.dim == 384
    out = enc(["pick up the black bowl", "open the top drawer", "pick up the black bowl"])
    assert out.shape == (3, 384)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), rtol=1e-4, atol=1e-4)  # unit-norm sentences
    assert torch.equal(out[0], out[2])
    similar = enc(["pick up the black bowl and place it on the plate"])[0]
    assert torch.dot(out[0], similar) > torch.dot(out[1], similar)  # it is a real sentence encoder


def test_policy_conditions_on_language_through_a_local_clip(tiny_clip_dir):
    from tests.policies.mode.helpers import make_batch, make_policy, tiny_config
    from vla.policies import PolicyError

    cfg = tiny_config(language_encoder="clip", language_path=str(tiny_clip_dir), language_dim=16)
    policy = make_policy(cfg).eval()
    batch = make_batch(cfg, batch_size=2, with_action=False)
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim)
    a = policy.predict_chunk({**batch, "task": ["open the drawer", "pick up the red cup"]}, noise=noise)
    b = policy.predict_chunk({**batch, "task": ["pick up the red cup", "pick up the red cup"]}, noise=noise)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # the instruction matters, per sample
    assert not any(k.startswith("language") for k in policy.state_dict())  # frozen encoder: not in the weights
    assert policy.config.to_dict()["language_path"] == str(tiny_clip_dir)  # ...but recorded in the config
    train_batch = make_batch(cfg, batch_size=2)
    train_batch["task"] = ["open the drawer", "close the drawer"]
    loss, _ = policy.train()(train_batch)
    assert torch.isfinite(loss)
    wrong = make_policy(tiny_config(language_encoder="clip", language_path=str(tiny_clip_dir), language_dim=384))
    with pytest.raises(PolicyError, match="language_dim=16"):
        wrong(train_batch)
