"""Pretrained encoders from local files only: a timm ResNet camera encoder (FiLM, frozen BatchNorm statistics)
from a safetensors or a weights-only torch file, and a CLIP text tower from a local directory, in a policy.
Nothing is downloaded: the hub is switched off for every test here."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.policies.mode.helpers import make_batch, stats_for, tiny_config
from tests.policies.test_language import tiny_clip_dir  # noqa: F401  (a fixture)
from vla.policies import PolicyError
from vla.policies.mode import MoDEConfig, MoDEPolicy
from vla.policies.modules.vision_timm import TimmFiLMResNet


class Pickled:
    """An object whose unpickling runs this module's code: what weights_only=True refuses."""


NAME = "resnet10t"  # the smallest timm ResNet: the same loading path as resnet50, a fifth of the size


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    """A random timm resnet10t with its ImageNet classifier, saved as safetensors and as a torch file."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a pretrained file has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    d = tmp_path_factory.mktemp("timm")
    save_file(state, str(d / "resnet.safetensors"))
    torch.save({"state_dict": state}, d / "resnet.pth")
    return d, state


def test_timm_encoder_loads_local_weights_and_film_starts_as_identity(timm_files):
    d, state = timm_files
    for path in (d / "resnet.safetensors", d / "resnet.pth"):
        enc = TimmFiLMResNet(NAME, 32, cond_dim=16)
        enc.load_weights(path)
        got = enc.backbone.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("fc."))
    images, goal = torch.rand(2, 3, 64, 64), torch.randn(2, 16)
    enc.eval()
    plain = timm.create_model(NAME, pretrained=False, num_classes=0).eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    feats = plain((images - mean[:, None, None]) / std[:, None, None])
    torch.testing.assert_close(enc(images, goal), enc.head(feats))  # zero FiLM: the pretrained network
    with torch.no_grad():  # FiLM after every residual block's last norm, as the scratch FiLM ResNet
        for film in enc.film:
            film[1].weight.normal_(std=0.1)
    assert len(enc.film) == sum(len(getattr(plain, f"layer{i}")) for i in range(1, 5))
    assert not torch.allclose(enc(images, goal), enc(images, -goal))


def test_batchnorm_statistics_stay_frozen_in_training(timm_files):
    d, state = timm_files
    enc = TimmFiLMResNet(NAME, 8, cond_dim=4)
    enc.load_weights(d / "resnet.safetensors")
    enc.train()
    assert enc.training and not any(m.training for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d))
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    loss = enc(torch.rand(4, 3, 32, 32), torch.randn(4, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    bn = "bn1.running_mean" if "bn1.running_mean" in state else next(k for k in state if k.endswith("running_mean"))
    assert torch.equal(enc.backbone.state_dict()[bn], state[bn])  # statistics untouched
    weight = bn.replace("running_mean", "weight")
    assert not torch.equal(enc.backbone.state_dict()[weight], state[weight])  # affine weights train


def test_bad_weight_files_fail_with_the_file_named(tmp_path):
    enc = TimmFiLMResNet(NAME, 8)
    with pytest.raises(PolicyError, match="not found"):
        enc.load_weights(tmp_path / "missing.safetensors")
    wrong = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(tmp_path / "r18.safetensors"))
    with pytest.raises(PolicyError, match=r"r18\.safetensors"):
        enc.load_weights(tmp_path / "r18.safetensors")
    # anything needing code to unpickle is refused (weights_only=True)
    torch.save({"obj": Pickled()}, tmp_path / "code.pth")
    with pytest.raises(PolicyError, match="weights_only"):
        enc.load_weights(tmp_path / "code.pth")
    with pytest.raises(PolicyError, match="vision_backbone"):
        MoDEConfig.from_preset("cpu", vision_backbone="vit_base_patch16_224")


def test_mode_with_a_local_resnet_and_clip_text_trains_saves_and_reloads(timm_files, tiny_clip_dir, tmp_path):  # noqa: F811
    d, state = timm_files
    cfg = tiny_config(
        vision_backbone=NAME,
        vision_weights=str(d / "resnet.safetensors"),  # one path: every camera
        language_encoder="clip",
        language_path=str(tiny_clip_dir),
        language_dim=16,
        image_size=(48, 48),
    )
    assert cfg.vision_weights == str(d / "resnet.safetensors")
    torch.manual_seed(0)
    policy = MoDEPolicy(cfg, stats_for(cfg))
    camera = next(iter(policy.obs_encoder.cameras.values()))
    assert isinstance(camera, TimmFiLMResNet) and torch.equal(camera.backbone.conv1[0].weight, state["conv1.0.weight"])
    batch = make_batch(cfg)
    batch["task"] = ["pick up the red cup", "open the drawer"]
    loss, _ = policy(batch)
    loss.backward()
    assert torch.isfinite(loss)
    # the checkpoint holds the encoder's trained weights: the initial file is not needed to load it (here it
    # names a file that does not exist, as on another machine)
    policy.config = cfg.replace(vision_weights=str(tmp_path / "gone.safetensors"))
    policy.save_pretrained(tmp_path / "ckpt")
    restored = MoDEPolicy.from_pretrained(tmp_path / "ckpt")
    assert restored.config.vision_weights == str(tmp_path / "gone.safetensors")
    policy.eval()
    restored.eval()
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(restored.predict_chunk(batch, noise=noise), policy.predict_chunk(batch, noise=noise))
    with pytest.raises(PolicyError, match="2 paths for 1 cameras"):
        tiny_config(vision_weights=("a", "b"))


def test_resnet50_builds_offline_with_film_on_every_bottleneck():
    enc = TimmFiLMResNet("resnet50", 8, cond_dim=4)  # pretrained=False: built from its config, nothing fetched
    assert len(enc.film) == 3 + 4 + 6 + 3 and enc.head.in_features == 2048
    assert enc.film[0][1].out_features == 2 * 256  # after bn3, the bottleneck's expanded width
    assert enc(torch.rand(1, 3, 32, 32), torch.randn(1, 4)).shape == (1, 8)


def test_scratch_film_resnet_weights_per_camera_and_a_missing_file(tmp_path):
    cfg = tiny_config(camera_keys=("observation.images.a", "observation.images.b"))
    torch.manual_seed(1)
    source = MoDEPolicy(cfg, stats_for(cfg))
    cams = list(source.obs_encoder.cameras.values())
    save_file(cams[0].state_dict(), str(tmp_path / "a.safetensors"))
    torch.save(cams[1].state_dict(), tmp_path / "b.pt")
    policy = MoDEPolicy(cfg.replace(vision_weights=(str(tmp_path / "a.safetensors"), str(tmp_path / "b.pt"))))
    for mine, theirs in zip(policy.obs_encoder.cameras.values(), cams, strict=True):
        assert all(torch.equal(mine.state_dict()[k], v) for k, v in theirs.state_dict().items())
    with pytest.raises(PolicyError, match="not found"):
        MoDEPolicy(cfg.replace(vision_weights=str(tmp_path / "none.safetensors")))
