"""ResNeXt registry, init, timm-style interface, and trunk export into torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import Bottleneck

from pipeline.train import models
from pipeline.train.models import ResNeXt, create_model, export_trunk, list_models, load_trunk, register_model, torchvision_resnet

# Mahajan et al. 2018 / WSL-Images README, at 1000 classes (millions).
PAPER_PARAMS_M = {"resnext101_32x8d": 88, "resnext101_32x16d": 193, "resnext101_32x32d": 466, "resnext101_32x48d": 829}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_param_counts_match_paper(name):
    with torch.device("meta"):  # shapes only: no memory for 829M parameters
        model = create_model(name, num_classes=1000)
    assert next(model.parameters()).is_meta
    got = _n_params(model) / 1e6
    assert abs(got - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01, (name, got)


@pytest.mark.parametrize("name,tv_name", [("resnext50_32x4d", "resnext50_32x4d"), ("resnext101_32x8d", "resnext101_32x8d")])
def test_same_keys_and_shapes_as_torchvision(name, tv_name):
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000).state_dict()
        theirs = getattr(torchvision.models, tv_name)().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_registry_lists_explicit_names_and_rejects_unknown():
    names = list_models()
    for n in [
        "resnext_mini",
        "resnext26_32x4d",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext101_32x16d",
        "resnext101_32x32d",
        "resnext101_32x48d",
    ]:
        assert n in names
    with pytest.raises(ValueError, match="resnext101_32x8d"):  # the message lists known names
        create_model("ig_resnext101_32x48d")


def test_each_name_is_its_own_architecture():
    widths = {}
    for n in ["resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d", "resnext101_32x48d"]:
        with torch.device("meta"):
            m = create_model(n, num_classes=0)
        widths[n] = m.layer1[0].conv2.weight.shape[0]
        assert m.model_name == n
    assert widths == {"resnext101_32x8d": 256, "resnext101_32x16d": 512, "resnext101_32x32d": 1024, "resnext101_32x48d": 1536}


def test_registry_duplicate_raises():
    def resnext_mini(**kwargs):  # same name as a registered model
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnext_mini)
    assert models._MODEL_ENTRYPOINTS["resnext_mini"] is not resnext_mini


def test_goyal_init_zero_gamma_and_fc():
    torch.manual_seed(0)
    m = create_model("resnext26_32x4d", num_classes=500)
    blocks = [b for b in m.modules() if isinstance(b, Bottleneck)]
    assert len(blocks) == 8
    for b in blocks:
        assert torch.count_nonzero(b.bn3.weight) == 0
        assert torch.all(b.bn2.weight == 1)
    assert torch.count_nonzero(m.fc.bias) == 0
    assert abs(m.fc.weight.std().item() - 0.01) < 0.001
    assert abs(m.fc.weight.mean().item()) < 0.001
    off = create_model("resnext_mini", num_classes=5, zero_init_residual=False, fc_std=0.5)
    assert torch.all(off.layer1[0].bn3.weight == 1)
    assert off.fc.weight.std().item() > 0.2


def test_mini_forward_shapes_at_64px():
    m = create_model("resnext_mini", num_classes=37).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (3, m.num_features, 2, 2)
        assert m.forward_head(feats, pre_logits=True).shape == (3, 2048)
        logits = m(x)
    assert logits.shape == (3, 37)
    assert torch.allclose(logits, m.forward_head(feats))


def test_reset_classifier():
    m = create_model("resnext_mini", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    m.reset_classifier(0)
    assert isinstance(m.get_classifier(), nn.Identity) and m.num_classes == 0
    assert "fc.weight" not in m.state_dict()
    with torch.no_grad():
        assert m(x).shape == (2, m.num_features)
    m.reset_classifier(7)
    assert isinstance(m.fc, nn.Linear) and m.fc.out_features == 7
    assert torch.count_nonzero(m.fc.bias) == 0
    with torch.no_grad():
        assert m(x).shape == (2, 7)
    with pytest.raises(ValueError):
        m.reset_classifier(-1)


@pytest.mark.slow
def test_export_trunk_loads_into_torchvision_resnext50(tmp_path):
    torch.manual_seed(0)
    m = create_model("resnext50_32x4d", num_classes=11)
    with torch.no_grad():  # non-trivial BN stats and gammas, so a wrong mapping would show
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    m.eval()
    pth, st = export_trunk(m, tmp_path / "trunk")
    assert pth.name == "trunk.pth" and st.name == "trunk.safetensors"
    assert not list(tmp_path.glob(".*"))  # no temp files left
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.forward_head(m.forward_features(x), pre_logits=True)
    for sd in (torch.load(pth, weights_only=True), load_file(str(st))):
        assert not any(k.startswith("fc.") for k in sd)
        tv = torchvision.models.resnext50_32x4d()
        tv.fc = nn.Identity()
        tv.load_state_dict(sd, strict=True)
        with torch.no_grad():
            assert torch.allclose(tv.eval()(x), ref, atol=1e-5)
    back = load_trunk(st, "resnext50_32x4d").eval()
    assert isinstance(back.fc, nn.Identity)
    with torch.no_grad():
        assert torch.allclose(back(x), ref, atol=1e-5)
    with pytest.raises(ValueError, match="resnext50_32x4d"):
        load_trunk(st, "resnext26_32x4d")  # metadata names another model


def test_export_trunk_of_mini_loads_into_plain_resnet(tmp_path):
    m = create_model("resnext_mini", num_classes=3)
    pth, _ = export_trunk(nn.DataParallel(m), tmp_path / "mini")  # wrapper keys are stripped
    tv = torchvision_resnet(m.spec)
    tv.fc = nn.Identity()
    tv.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    assert isinstance(load_trunk(pth, "resnext_mini"), ResNeXt)


def test_pooled_stage_features_concatenate_the_stages_and_layer4_is_the_penultimate_layer():
    import pytest
    import torch

    from pipeline.train.models import create_model

    torch.manual_seed(0)
    m = create_model("resnext_mini", num_classes=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pen = m.forward_head(m.forward_features(x), pre_logits=True)
        l4 = m.pooled_stage_features(x, ("layer4",))
        multi = m.pooled_stage_features(x, ("layer2", "layer3", "layer4"))
        l3 = m.pooled_stage_features(x, ("layer3",))
    assert torch.allclose(pen, l4) and l4.shape == (3, 2048)
    assert multi.shape == (3, 512 + 1024 + 2048)
    assert torch.allclose(multi[:, 512:1536], l3) and torch.allclose(multi[:, 1536:], l4)
    with pytest.raises(ValueError, match="stages"):
        m.pooled_stage_features(x, ("layer5",))


def test_a_head_on_several_stages_reads_their_pooled_outputs_and_trains_them():
    import pytest
    import torch

    from pipeline.train.models import create_model

    torch.manual_seed(0)
    m = create_model("resnext_mini", num_classes=0)
    m.reset_classifier(5, ("layer4", "layer2"))  # any order: read in network order
    assert m.head_stages == ("layer2", "layer4") and m.get_classifier().weight.shape == (5, 512 + 2048)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), m.fc(m.pooled_stage_features(x, ("layer2", "layer4"))))
    m.train()
    m.set_grad_checkpointing(True)  # the head's stages are checkpointed like the plain forward's
    torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3])).backward()
    assert m.layer2[0].conv1.weight.grad is not None and m.layer4[0].conv1.weight.grad is not None
    m.reset_classifier(3)  # no stages given: the head keeps reading layer2 and layer4
    assert m.get_classifier().weight.shape == (3, 512 + 2048)
    m.reset_classifier(3, ["layer4"])
    assert m.get_classifier().weight.shape == (3, 2048)
    with pytest.raises(ValueError, match="stages"):
        m.reset_classifier(3, ["layer9"])
