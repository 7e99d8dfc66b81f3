"""The network splitter (remind.split / remind.networks) and the original's names as aliases over it."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from image_classification_experiments.resnet_models import (
    FULL_NETWORKS, SPLIT_FOR_HEAD, ResNet18ClassifyAfterLayer4_0, ResNet18ClassifyAfterLayer4_1, build_full_network,
    build_split, resolve_network)
from remind import REMIND, REMINDConfig, SplitError, split_network, split_points, split_torchvision
from remind.checkpoint import CheckpointError
from helpers import randomise

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A ResNet18ClassifyAfterLayer4_1 checkpoint as the base-init script writes it."""
    torch.manual_seed(0)
    network = randomise(ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES), seed=1, weights=True)
    path = tmp_path_factory.mktemp("ckpt") / "best_ResNet18ClassifyAfterLayer4_1.pth"
    torch.save({"state_dict": network.state_dict()}, path)
    return path, network.state_dict()


def _hand_cut(resnet: nn.Module, maps_of: str):
    """The paper's split written out by hand: G = stem .. layer4[0], F = layer4[1:], mean, fc."""
    def trunk(x):
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            x = getattr(resnet, name)(x)
        return resnet.layer4[0](x)

    def head(maps):
        for block in list(resnet.layer4)[1:]:
            maps = block(maps)
        return resnet.fc(maps.mean(dim=(2, 3)))
    return trunk, head


def test_paper_split_is_bit_identical_to_the_hand_cut(ckpt):
    path, state = ckpt
    G, F = build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(path), image_size=64)
    reference = ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES)
    reference.load_state_dict(state)
    trunk, head = _hand_cut(reference.model.eval(), "layer4.0")
    torch.manual_seed(2)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(G(x), trunk(x))
    # F in train mode (batch statistics), forward and gradients, as a replay step uses it
    reference.model.layer4[1].train()
    F.train()
    maps = torch.randn(6, 512, 2, 2)
    ours, theirs = F(maps), head(maps)
    assert torch.equal(ours, theirs)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    named = dict(reference.named_parameters())
    assert [n for n, _ in F.named_parameters()] == [n for n in named if n.startswith(("model.layer4.1.", "model.fc."))]
    for name, p in F.named_parameters():
        assert torch.equal(p.grad, named[name].grad), name
    assert set(F.state_dict()) == {k for k in state if k.startswith(("model.layer4.1.", "model.fc."))}


@pytest.mark.parametrize("arch,layer,shape", [
    ("resnet50", "layer3", (1024, 4, 4)),
    ("mobilenet_v3_large", "features.7", (80, 4, 4)),      # SIESTA's split
    ("efficientnet_b0", "features.5", (112, 4, 4)),
    ("convnext_tiny", "features.5", (384, 4, 4)),
    ("regnet_y_400mf", "trunk_output.block3", (208, 4, 4)),
    ("squeezenet1_1", "features.9", (384, 3, 3)),
])
def test_any_torchvision_model_splits_and_g_then_f_is_the_network(arch, layer, shape):
    torch.manual_seed(0)
    network = torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES).eval()
    G, F = split_network(network, layer, image_size=64)
    F.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = G(x)
        assert tuple(maps.shape[1:]) == shape
        torch.testing.assert_close(F(maps), network(x), rtol=0, atol=0)
    assert all(not p.requires_grad for p in G.parameters())
    assert all(p.requires_grad for p in F.parameters())


def test_f_switches_train_and_eval_graphs():
    torch.manual_seed(0)
    network = torchvision.models.mobilenet_v3_large(num_classes=NUM_CLASSES)  # dropout in its classifier
    _, F = split_network(network, "features.7", image_size=64)
    maps = torch.randn(4, 80, 4, 4)
    F.eval()
    with torch.no_grad():
        assert torch.equal(F(maps), F(maps))
        F.train()
        assert not torch.equal(F(maps), F(maps))  # dropout (and batch statistics) in train mode


def test_g_is_frozen_and_stays_in_eval(ckpt):
    G, _ = build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(ckpt[0]), image_size=64)
    G.train()
    nn.Sequential(G).train()  # also when a parent module switches modes
    assert all(not m.training for m in G.modules())
    bn = G.layers.model.bn1
    before = bn.running_mean.clone()
    y = G(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(bn.running_mean, before) and not y.requires_grad


def test_cuts_that_cannot_work_are_refused_naming_the_layers_that_can():
    network = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    with pytest.raises(SplitError) as err:  # inside a residual block: the skip connection crosses the cut
        split_network(network, "layer4.0.conv2", image_size=64)
    message = str(err.value)
    assert "layer4.0.conv2" in message and "layer4.0, layer4.1" in message and "\n" not in message
    with pytest.raises(SplitError, match="no such layer"):
        split_network(network, "layer9", image_size=64)
    with pytest.raises(SplitError, match="not a .N, C, H, W. feature map"):
        split_network(network, "fc", image_size=64)
    points = split_points(network, image_size=64)
    assert points["layer4.0"] == (512, 2, 2) and "layer4.0.conv2" not in points and "fc" not in points


def test_aliases_resolve_to_the_paper_split():
    assert resolve_network() == ("ResNet18ClassifyAfterLayer4_1", "model.layer4.0")
    assert resolve_network(base_arch="ResNet18ClassifyAfterLayer4_1", extract_features_from="model.layer4.0",
                           classifier="ResNet18_StartAt_Layer4_1") == ("ResNet18ClassifyAfterLayer4_1", "model.layer4.0")
    assert resolve_network(classifier="ResNet18_StartAt_Layer3_0") == ("ResNet18ClassifyAfterLayer4_1", "model.layer2")
    assert resolve_network("resnet50", "layer3") == ("resnet50", "layer3")
    with pytest.raises(ValueError, match="--split_at"):
        resolve_network("mobilenet_v3_large")
    with pytest.raises(ValueError, match="disagree"):
        resolve_network(arch="resnet18", base_arch="ResNet18")
    with pytest.raises(ValueError, match="starts after"):
        resolve_network(split_at="model.layer3", classifier="ResNet18_StartAt_Layer4_1")
    with pytest.raises(ValueError, match="ResNet18_StartAt_Layer4_1"):
        resolve_network(classifier="ResNet18_StartAt_Layer5_0")
    # every head of the original is a clean cut of the full network
    network = ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES)
    assert set(SPLIT_FOR_HEAD.values()) <= set(split_points(network, image_size=64))


def test_checkpoints_load_by_name_and_refuse_other_networks(tmp_path, ckpt):
    path, state = ckpt
    G, F = build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(path), image_size=64)
    for name, tensor in G.state_dict().items():
        assert torch.equal(tensor, state[name[len("layers."):]]), name
    other = tmp_path / "layer4_0.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_0(num_classes=NUM_CLASSES).state_dict()}, other)
    with pytest.raises(CheckpointError, match="layer4.1"):
        build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(other), image_size=64)
    with pytest.raises(CheckpointError, match="model.fc"):
        build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES + 5, str(path), image_size=64)
    tagged = tmp_path / "tagged.pth"
    torch.save({"state_dict": state, "arch": "ResNet18ClassifyAfterLayer4_0"}, tagged)
    with pytest.raises(CheckpointError, match="ResNet18ClassifyAfterLayer4_0"):
        build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(tagged), image_size=64)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        build_split("ResNet18ClassifyAfterLayer4_1", "model.layer4.0", NUM_CLASSES, str(junk))
    with pytest.raises(ValueError) as err:
        build_full_network("ResNet19")
    assert all(name in str(err.value) for name in FULL_NETWORKS)


def test_torchvision_weights_with_another_classifier_load_all_but_it(tmp_path, capsys):
    torch.manual_seed(0)
    imagenet_like = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-weights.pth"
    torch.save(imagenet_like.state_dict(), path)
    G, F = split_torchvision("resnet18", "layer4.0", NUM_CLASSES, weights=str(path), image_size=64)
    assert "another number of classes" in capsys.readouterr().out
    assert torch.equal(F.state_dict()["layer4.1.conv1.weight"], imagenet_like.state_dict()["layer4.1.conv1.weight"])
    assert F.state_dict()["fc.weight"].shape == (NUM_CLASSES, 512)
    torch.save({k: v for k, v in imagenet_like.state_dict().items() if not k.startswith("layer4")}, path)
    with pytest.raises(CheckpointError, match="missing"):
        split_torchvision("resnet18", "layer4.0", NUM_CLASSES, weights=str(path), image_size=64)


def test_an_embedded_learner_leaves_torch_global_random_state_alone():
    torch.manual_seed(0)
    G, F = split_torchvision("resnet18", "layer2", 4, image_size=32)
    learner = REMIND(G, F, REMINDConfig(num_classes=4, num_codebooks=8, codebook_size=16, replays_per_step=4,
                                        lr_examples_per_class=10), device="cpu")
    images, labels = torch.randn(24, 3, 32, 32), torch.arange(24) % 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)
    learner.fit_base(loader)
    state = learner.state_dict()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    learner.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), before)
    learner.load_state_dict(state, restore_global_rng=True)  # what a resumed script asks for
    assert torch.equal(torch.get_rng_state(), state["learner"]["torch_rng"])
    assert np.isfinite(float(learner.learn(images[:4], labels[:4] + 2)))


@pytest.mark.filterwarnings("ignore:The default weight initialization of inception_v3")
def test_weights_of_a_deeper_network_and_states_of_another_geometry_are_refused(tmp_path):
    path = tmp_path / "resnet34.pth"  # every ResNet-18 name and shape is in it, and more: must not load silently
    torch.save(torchvision.models.resnet34(num_classes=NUM_CLASSES).state_dict(), path)
    with pytest.raises(CheckpointError, match="no place for"):
        split_torchvision("resnet18", "layer3", NUM_CLASSES, weights=str(path), image_size=32)
    with pytest.raises(SplitError, match="larger --image_size"):  # Inception's kernels outgrow 64 px maps
        split_torchvision("inception_v3", "Mixed_6e", NUM_CLASSES, image_size=64)
    torch.manual_seed(0)
    config = REMINDConfig(num_classes=4, num_codebooks=8, codebook_size=16, lr_examples_per_class=10)
    learner = REMIND(*split_torchvision("resnet18", "layer3", 4, image_size=32), config, device="cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32),
                                                                        torch.arange(16) % 4), batch_size=8)
    learner.fit_base(loader)
    other = REMIND(*split_torchvision("resnet18", "layer3", 4, image_size=32),
                   dataclasses.replace(config, num_codebooks=16), device="cpu")
    with pytest.raises(ValueError, match="8 codebooks of 16 centroids"):
        other.load_state_dict(learner.state_dict())
