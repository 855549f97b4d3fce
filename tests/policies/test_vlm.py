"""VisionLanguageBackbone on a tiny random PaliGemma built offline: shapes, masks, freezing, errors, no network."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from torch import nn

from vla.errors import PolicyError, VlaError
from vla.policies.modules.vlm import VisionLanguageBackbone
from vla.testing.vlm import build_tiny_paligemma

CAMS = ("observation.images.image", "observation.images.wrist")
MAX_TEXT = 12


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        return build_tiny_paligemma(tmp_path_factory.mktemp("tiny_paligemma"))


@pytest.fixture(scope="module")
def backbone(tiny_dir):
    return VisionLanguageBackbone(tiny_dir, CAMS, max_text_tokens=MAX_TEXT)


def _images(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # cameras of different sizes and a 2-frame history: the backbone resizes and takes the last frame
    return {
        CAMS[0]: torch.rand(batch, 2, 3, 40, 48, generator=g),
        CAMS[1]: torch.rand(batch, 2, 3, 24, 24, generator=g),
    }


def _n_text(bb: VisionLanguageBackbone, text: str) -> int:
    return min(MAX_TEXT, 1 + len(bb.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]))


def test_shapes_and_valid_mask(backbone):
    texts = ["open the drawer", "pick up the red block and put it in the top drawer of the cabinet now"]
    tokens, valid = backbone(_images(2), texts)
    n_img = len(CAMS) * backbone.num_image_tokens
    assert backbone.out_dim == 32 and backbone.num_image_tokens == 16
    assert tokens.shape == (2, n_img + MAX_TEXT, backbone.out_dim) == (2, backbone.n_tokens, 32)
    assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()
    assert valid.dtype == torch.bool and valid.shape == tokens.shape[:2]
    assert valid[:, :n_img].all()  # every camera's image tokens
    n0 = _n_text(backbone, texts[0])
    assert 2 < n0 < MAX_TEXT
    assert valid[0, n_img:].tolist() == [True] * n0 + [False] * (MAX_TEXT - n0)  # text then right padding
    assert valid[1, n_img:].all()  # the long instruction is truncated to fit


def test_padding_and_batch_do_not_change_a_sample(backbone):
    images = _images(2)
    tokens, valid = backbone(images, ["close it", "put the bowl on the plate and the mug in the basket"])
    alone, valid_alone = backbone({k: v[:1] for k, v in images.items()}, ["close it"])
    assert torch.equal(valid_alone[0], valid[0])
    torch.testing.assert_close(alone[0][valid[0]], tokens[0][valid[0]], rtol=1e-5, atol=1e-5)


def test_image_tokens_see_the_instruction_and_text_sees_images(backbone):
    images = _images(1)
    a, valid = backbone(images, ["open the drawer"])
    b, _ = backbone(images, ["close the microwave"])
    c, _ = backbone(_images(1, seed=1), ["open the drawer"])
    n_img = len(CAMS) * backbone.num_image_tokens
    # one bidirectional prefix (PaliGemma's prefix-LM mask): image tokens depend on the text, text on images
    assert not torch.allclose(a[:, :n_img], b[:, :n_img])
    assert not torch.allclose(a[:, n_img:][valid[:, n_img:]], c[:, n_img:][valid[:, n_img:]])


def test_frozen_weights_get_no_grad_but_a_head_trains(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.training and not backbone.model.training  # eval kept: no dropout in a frozen backbone
    head = nn.Linear(backbone.out_dim, 4)
    tokens, valid = backbone(_images(2), ["open the drawer", "close the microwave"])
    loss = head(tokens)[valid].pow(2).mean()
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    backbone.eval()


def test_unfrozen_backbone_fine_tunes(tiny_dir):
    bb = VisionLanguageBackbone(tiny_dir, CAMS, freeze=False, max_text_tokens=MAX_TEXT).train()
    assert bb.model.training and all(p.requires_grad for p in bb.parameters())
    tokens, valid = bb(_images(2), ["open the drawer", "close it"])
    tokens[valid].pow(2).mean().backward()
    patch = bb.model.vision_tower.vision_model.embeddings.patch_embedding.weight
    assert patch.grad is not None and patch.grad.abs().sum() > 0  # through the image tokens into SigLIP


def test_deterministic_across_calls_and_loads(backbone, tiny_dir):
    images, texts = _images(2), ["open the drawer", "stack the green cube"]
    a, va = backbone(images, texts)
    b, _ = backbone(images, texts)
    c, vc = VisionLanguageBackbone(tiny_dir, CAMS, max_text_tokens=MAX_TEXT)(images, texts)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(va, vc)


def test_tokenisation_is_cached_per_instruction(tiny_dir):
    bb = VisionLanguageBackbone(tiny_dir, CAMS[:1], max_text_tokens=MAX_TEXT)
    images = {CAMS[0]: torch.rand(3, 1, 3, 32, 32)}
    bb(images, ["open the drawer", "open the drawer", "close it"])
    bb(images, ["close it", "open the drawer", "open the drawer"])
    assert bb.tokenizer_calls == 2
    tokens, _ = bb(images, ["a", "b", "c"])
    assert tokens.shape == (3, 16 + MAX_TEXT, 32)  # one camera: fewer image tokens


def test_bfloat16_backbone_returns_float32(backbone, tiny_dir):
    bb = VisionLanguageBackbone(tiny_dir, CAMS, max_text_tokens=MAX_TEXT, dtype=torch.bfloat16)
    assert bb.dtype == torch.bfloat16
    images, texts = _images(1), ["open the drawer"]
    low, valid = bb(images, texts)
    ref, _ = backbone(images, texts)
    assert low.dtype == torch.float32
    assert (low - ref)[valid].abs().max() < 0.1 * ref.abs().max()


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(PolicyError, match="does not exist") as e:
        VisionLanguageBackbone(missing, CAMS)
    assert str(missing) in str(e.value) and isinstance(e.value, VlaError)


def test_directory_without_tokenizer(tiny_dir, tmp_path):
    bare = tmp_path / "no_tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, bare / name)
    with pytest.raises(PolicyError, match="no tokenizer files") as e:
        VisionLanguageBackbone(bare, CAMS)
    assert str(bare) in str(e.value)


def test_wrong_model_type(tmp_path):
    from transformers import GemmaConfig

    GemmaConfig(hidden_size=32, num_hidden_layers=1, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(PolicyError, match="'gemma' is not supported") as e:
        VisionLanguageBackbone(tmp_path, CAMS)
    assert str(tmp_path) in str(e.value)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(PolicyError, match=r"no config\.json"):
        VisionLanguageBackbone(tmp_path, CAMS)


def test_bad_inputs(backbone):
    with pytest.raises(PolicyError, match=r"no camera 'observation\.images\.wrist'"):
        backbone({CAMS[0]: torch.rand(1, 1, 3, 32, 32)}, ["open"])
    with pytest.raises(PolicyError, match=r"expected \(2, n_obs, 3, H, W\)"):
        backbone(_images(1), ["open", "close"])  # batch of images and instructions differ
    with pytest.raises(PolicyError, match="sequence of B instruction strings"):
        backbone(_images(1), "open")


def test_loading_and_forward_never_touch_the_network(tiny_dir, offline):
    bb = VisionLanguageBackbone(tiny_dir, CAMS, max_text_tokens=MAX_TEXT)
    tokens, _ = bb(_images(1), ["open the drawer"])
    assert tokens.shape == (1, bb.n_tokens, bb.out_dim)


def test_image_stats_from_preprocessor_or_processor_config(backbone, tmp_path):
    import json

    from vla.policies.modules.vlm import _read_image_stats

    assert backbone.image_mean.flatten().tolist() == [0.5] * 3  # the tiny model's SigLIP preprocessor config
    assert _read_image_stats(tmp_path) == ((0.5,) * 3, (0.5,) * 3)  # none saved: SigLIP's default
    # transformers 5 processors save one processor_config.json with the image processor nested in it
    nested = {"image_processor": {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    assert _read_image_stats(tmp_path) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": 0.0, "image_std": 0.0}))
    with pytest.raises(PolicyError, match="image_mean/image_std"):
        _read_image_stats(tmp_path)
