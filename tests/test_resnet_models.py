"""ResNet-18 split into a frozen trunk G and a plastic head F, and checkpoint loading by name."""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from image_classification_experiments.resnet_models import (
    FULL_NETWORKS, PLASTIC_NETWORKS, SPLIT_FOR_HEAD, FeatureTrunk, ResNet18ClassifyAfterLayer4_0,
    ResNet18ClassifyAfterLayer4_1, build_full_network, build_plastic, build_plastic_network, build_trunk)
from remind.checkpoint import CheckpointError
from helpers import randomise

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A ResNet18ClassifyAfterLayer4_1 checkpoint as the base-init script writes it."""
    torch.manual_seed(0)
    network = randomise(ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES), seed=1, weights=True)
    state = network.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "best_ResNet18ClassifyAfterLayer4_1.pth"
    torch.save({"state_dict": state}, path)
    return path, state


@pytest.fixture(scope="module")
def full_net(ckpt):
    network = build_full_network("ResNet18ClassifyAfterLayer4_1", NUM_CLASSES)
    network.load_state_dict(ckpt[1])
    return network.eval()


def test_every_head_after_its_trunk_equals_full_network(ckpt, full_net):
    path, _ = ckpt
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = full_net(x)
    assert expected.shape == (2, NUM_CLASSES) and float(expected.std()) > 1e-2
    assert set(PLASTIC_NETWORKS) == set(SPLIT_FOR_HEAD)
    for head_name, split in SPLIT_FOR_HEAD.items():
        # G cut from a network loaded from the checkpoint (build_trunk itself: see below)
        trunk = FeatureTrunk(full_net, split)
        head = build_plastic(head_name, str(path), NUM_CLASSES).eval()
        with torch.no_grad():
            out = head(trunk(x))
        scale = float(expected.abs().max())
        assert float((out - expected).abs().max()) <= 1e-5 * max(1.0, scale), head_name
    # and through build_trunk for the paper's split
    trunk = build_trunk("ResNet18ClassifyAfterLayer4_1", str(path), "model.layer4.0", NUM_CLASSES)
    head = build_plastic("ResNet18_StartAt_Layer4_1", str(path), NUM_CLASSES).eval()
    with torch.no_grad():
        out = head(trunk(x))
    assert float((out - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_trunk_output_shapes(full_net):
    x = torch.randn(1, 3, 64, 64)
    shapes = {"model.maxpool": (64, 16, 16), "model.layer1.0": (64, 16, 16), "model.layer2": (128, 8, 8),
              "model.layer3.0": (256, 4, 4), "model.layer4.0": (512, 2, 2), "model.layer4": (512, 2, 2)}
    for split, shape in shapes.items():
        assert tuple(FeatureTrunk(full_net, split)(x).shape[1:]) == shape, split
    # layer4.0 and layer4 (both blocks) must differ: the trunk really stops after block 0
    a = FeatureTrunk(full_net, "model.layer4.0")(x)
    b = FeatureTrunk(full_net, "model.layer4")(x)
    assert float((a - b).abs().max()) > 1e-3


def _check_plastic_weights(plastic, state):
    own = plastic.state_dict()
    assert set(own) == {k for k in state if k.startswith(("model.layer4.1.", "model.fc."))}
    for name, tensor in own.items():
        assert torch.equal(tensor, state[name]), name
    block = plastic.model.layer4[0]  # the only block F keeps, registered under the name '1'
    assert block is getattr(plastic.model.layer4, "1")
    assert torch.equal(block.conv1.weight, state["model.layer4.1.conv1.weight"])
    assert not torch.equal(block.conv1.weight, state["model.layer4.0.conv1.weight"])
    assert torch.equal(block.bn2.running_var, state["model.layer4.1.bn2.running_var"])
    assert torch.equal(plastic.model.fc.weight, state["model.fc.weight"])


def test_build_plastic_takes_checkpoint_tensors_by_name(ckpt, tmp_path):
    path, state = ckpt
    plastic = build_plastic("ResNet18_StartAt_Layer4_1", str(path), NUM_CLASSES)
    _check_plastic_weights(plastic, state)
    # the same with DataParallel's 'module.' prefixes, and with a bare state dict
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in state.items())}, prefixed)
    _check_plastic_weights(build_plastic("ResNet18_StartAt_Layer4_1", str(prefixed), NUM_CLASSES), state)
    bare = tmp_path / "bare.pth"
    torch.save(dict(state), bare)
    _check_plastic_weights(build_plastic("ResNet18_StartAt_Layer4_1", str(bare), NUM_CLASSES), state)


def test_build_trunk_takes_checkpoint_tensors(ckpt):
    path, state = ckpt
    trunk = build_trunk("ResNet18ClassifyAfterLayer4_1", str(path), "model.layer4.0", NUM_CLASSES)
    own = trunk.state_dict()
    assert "layers.layer4.0.conv1.weight" in own and not any(k.startswith("layers.layer4.1") for k in own)
    for name, tensor in own.items():
        assert torch.equal(tensor, state["model." + name[len("layers."):]]), name


def test_wrong_architecture_checkpoint_raises(tmp_path, ckpt):
    torch.manual_seed(1)
    other = tmp_path / "layer4_0.pth"
    torch.save({"state_dict": ResNet18ClassifyAfterLayer4_0(num_classes=NUM_CLASSES).state_dict()}, other)
    with pytest.raises(CheckpointError) as err:
        build_trunk("ResNet18ClassifyAfterLayer4_1", str(other), "model.layer4.0", NUM_CLASSES)
    assert "ResNet18ClassifyAfterLayer4_1" in str(err.value) and "layer4.1" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        build_plastic("ResNet18_StartAt_Layer4_1", str(other), NUM_CLASSES)
    assert "ResNet18_StartAt_Layer4_1" in str(err.value)
    # its own architecture loads fine
    build_trunk("ResNet18ClassifyAfterLayer4_0", str(other), "model.layer4.0", NUM_CLASSES)

    path, _ = ckpt
    with pytest.raises(CheckpointError) as err:
        build_plastic("ResNet18_StartAt_Layer4_1", str(path), NUM_CLASSES + 5)
    assert "ResNet18_StartAt_Layer4_1" in str(err.value) and "model.fc" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        build_trunk("ResNet18ClassifyAfterLayer4_1", str(path), "model.layer4.0", NUM_CLASSES + 5)
    assert "ResNet18ClassifyAfterLayer4_1" in str(err.value)


def test_checkpoint_with_recorded_arch_mismatch_raises(tmp_path, ckpt):
    _, state = ckpt
    path = tmp_path / "tagged.pth"
    torch.save({"state_dict": state, "arch": "ResNet18ClassifyAfterLayer4_0"}, path)
    with pytest.raises(CheckpointError, match="ResNet18ClassifyAfterLayer4_0"):
        build_trunk("ResNet18ClassifyAfterLayer4_1", str(path), "model.layer4.0", NUM_CLASSES)


def test_unreadable_checkpoint_raises(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        build_plastic("ResNet18_StartAt_Layer4_1", str(path), NUM_CLASSES)
    with pytest.raises(CheckpointError):
        build_trunk("ResNet18ClassifyAfterLayer4_1", str(tmp_path / "missing.pth"), "model.layer4.0", 10)


def test_trunk_is_frozen_and_stays_in_eval(ckpt):
    path, _ = ckpt
    trunk = build_trunk("ResNet18ClassifyAfterLayer4_1", str(path), "model.layer4.0", NUM_CLASSES)
    params = list(trunk.parameters())
    assert params and all(not p.requires_grad for p in params)
    trunk.train()
    assert not trunk.training and all(not m.training for m in trunk.modules())
    nn.Sequential(trunk).train()  # also when a parent module switches modes
    assert all(not m.training for m in trunk.modules())
    bn = trunk.layers.bn1
    before = bn.running_mean.clone()
    x = torch.randn(4, 3, 64, 64) * 3 + 1
    y1 = trunk(x)
    assert torch.equal(bn.running_mean, before)  # statistics never move
    assert not y1.requires_grad
    torch.testing.assert_close(trunk(x), y1, rtol=0, atol=0)


def test_plastic_head_is_trainable():
    head = build_plastic("ResNet18_StartAt_Layer4_1", None, NUM_CLASSES)
    assert all(p.requires_grad for p in head.parameters())
    out = head(torch.randn(3, 512, 7, 7))
    assert out.shape == (3, NUM_CLASSES)
    out.sum().backward()
    assert head.model.layer4[0].conv1.weight.grad is not None


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError) as err:
        build_full_network("ResNet19")
    assert "ResNet19" in str(err.value) and all(name in str(err.value) for name in FULL_NETWORKS)
    with pytest.raises(ValueError) as err:
        build_plastic_network("ResNet18_StartAt_Layer5_0", NUM_CLASSES)
    assert all(name in str(err.value) for name in PLASTIC_NETWORKS)
    with pytest.raises(ValueError) as err:
        build_plastic("nope", None, NUM_CLASSES)
    assert "ResNet18_StartAt_Layer4_1" in str(err.value)
    with pytest.raises(ValueError):
        build_trunk("nope", None, "model.layer4.0", NUM_CLASSES)
    network = ResNet18ClassifyAfterLayer4_0(num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="model.layer4.0"):
        FeatureTrunk(network, "model.avgpool")
    with pytest.raises(ValueError, match="layer4"):
        FeatureTrunk(network, "model.layer4.1")  # layer4 has one block in this network
