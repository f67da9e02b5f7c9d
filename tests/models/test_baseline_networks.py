"""The probe baselines of issue 14: Pons' temporal filters, the Audio Transformer with
multi-rate pooling, the ImageNet-style CNNs, and loading ImageNet weights from a local file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenlm.baselines.cnn import count_flops, load_model, save_model
from tokenlm.baselines.networks import build_network, network_config, title
from tokenlm.baselines.pretrained import load_imagenet_weights
from tokenlm.core.errors import ConfigError
from tokenlm.models.audio_transformer import multi_rate_pool
from tokenlm.models.cnn import MODELS
from tokenlm.pipeline.probe_config import BaselinesConfig, configs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = BaselinesConfig(temporal_widths=(3, 9), temporal_filters=4, timbre_filters=4, transformer_dim=16,
                        transformer_layers=2, transformer_heads=2, imagenet_width=4)
NEW = ("temporal", "timbre+temporal", "audio_transformer", "resnet18", "resnet50", "densenet121")


def small(name: str, n_classes: int = 3, **changes):
    torch.manual_seed(0)
    config = BaselinesConfig(**{**SMALL.__dict__, **changes})
    return build_network(name, network_config(name, 16, n_classes, config))


@pytest.mark.parametrize("name", NEW)
def test_shapes_and_clips_of_any_length(name):
    model = small(name).eval()
    for frames in (40, 7):
        x = torch.randn(2, 1, 16, frames)
        assert model(x).shape == (2, 3)
        assert model.embed(x).shape == (2, model.embed_dim)


@pytest.mark.parametrize("name", ["temporal", "timbre+temporal", "audio_transformer", "resnet18"])
def test_a_few_steps_lower_the_loss(name):
    model = small(name, n_classes=2)
    x = torch.randn(8, 1, 16, 24)
    x[4:, :, :, ::4] += 2.0  # class 1: a pulse every 4 frames, which every model can see
    y = torch.tensor([0] * 4 + [1] * 4)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_temporal_filters_are_cheap_and_both_branches_add_up():
    one_second = (1, 64, 100)
    costs = {name: count_flops(MODELS[name][1](MODELS[name][0](n_mels=64, n_classes=10)), one_second)
             for name in ("temporal", "timbre", "timbre+temporal", "vgg")}
    assert costs["temporal"] * 10 < costs["timbre"] < costs["vgg"]
    assert costs["timbre+temporal"] == pytest.approx(costs["timbre"] + costs["temporal"], rel=0.01)


def test_multi_rate_pooling_keeps_fine_dimensions_and_spreads_coarse_ones():
    h = torch.zeros(1, 21, 8)
    h[0, 10] = 1.0  # a spike in every dimension at frame 10
    out = multi_rate_pool(h, 4)  # groups of 2 dimensions, windows 1, 3, 5, 9
    spread = (out[0] > 0).sum(dim=0).tolist()
    assert spread == [1, 1, 3, 3, 5, 5, 9, 9]
    assert torch.allclose(out.sum(dim=1), h.sum(dim=1))  # averages move mass, never make it


def test_saved_baselines_load_as_what_they_are(tmp_path):
    for name in ("resnet50", "timbre+temporal", "audio_transformer"):
        model = small(name).eval()
        save_model(model, tmp_path / name)
        loaded, record = load_model(tmp_path / name)
        assert record["kind"] == name and type(loaded) is type(model)
        x = torch.randn(1, 1, 16, 30)
        assert torch.allclose(model(x), loaded(x))


@pytest.mark.parametrize("name,suffix", [("resnet18", ".pt"), ("densenet121", ".safetensors")])
def test_weights_written_by_the_test_load_and_the_head_is_replaced(tmp_path, name, suffix):
    source = small(name, n_classes=1000)  # an "ImageNet" model: 1000 classes
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # saved from DataParallel
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        # DenseNet's first checkpoints spell norm1 "norm.1": the loader maps the old names.
        old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v.contiguous() for k, v in state.items()}
        save_file(old, str(path))
    model = small(name, imagenet_weights=str(path))  # 3 classes: the head starts afresh
    assert model.config.pretrained == str(path) and "ImageNet weights" in title(name, model.config)
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(model.head_name):
            assert torch.equal(loaded[key], value), key
    assert loaded[f"{model.head_name}.weight"].shape[0] == 3


def test_wrong_weights_fail_in_one_line_naming_the_tensor(tmp_path):
    state = small("resnet18").state_dict()
    missing, wide = tmp_path / "missing.pt", tmp_path / "wide.pt"
    torch.save({k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}, missing)
    torch.save(small("resnet18", imagenet_width=8).state_dict(), wide)
    with pytest.raises(ConfigError, match=r"missing key 'layer2.0.conv1.weight'") as err:
        load_imagenet_weights(small("resnet18"), missing)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'conv1.weight' has shape \(8, 3, 7, 7\) but resnet18 needs \(4, 3, 7, 7\)"):
        load_imagenet_weights(small("resnet18"), wide)
    with pytest.raises(ConfigError, match="unexpected key 'layer1.0.conv3.weight'"):
        load_imagenet_weights(small("resnet18"), _save(tmp_path / "r50.pt", small("resnet50").state_dict()))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_imagenet_weights(small("resnet18"), tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="exactly one of resnet18, resnet50, densenet121"):
        configs({"baselines": ["vgg"], "imagenet_weights": str(wide)})
    with pytest.raises(ConfigError, match="no such file"):
        configs({"baselines": ["resnet18"], "imagenet_weights": str(tmp_path / "absent.pt")})


def _save(path, state):
    torch.save(state, path)
    return path
