"""remind.learner.StreamingLearner and the reference buffer (SharedCodes) it uses for VQA."""
import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from remind.buffer import ReplayBuffer, SharedCodes
from remind.learner import StreamingLearner
from remind.pq import PQCodec

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (2, 2, 4)  # H, W, M
CHANNELS = 8


def make_learner(seed=0, buffer_kind="codes", max_size=None, insert_first=False, replays=3, num_classes=3):
    gen = torch.Generator().manual_seed(seed)
    codec = PQCodec(torch.randn(SHAPE[2], 16, CHANNELS // SHAPE[2], generator=gen))
    net = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * SHAPE[0] * SHAPE[1], num_classes))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    image_codes = torch.randint(0, 16, (6, *SHAPE), generator=gen, dtype=torch.uint8)
    image_of = np.arange(40) % 6  # 40 examples over 6 images
    if buffer_kind == "none":
        buffer = None
    elif buffer_kind == "shared":
        buffer = ReplayBuffer(SHAPE, num_classes, max_size, shared_codes=SharedCodes(image_codes, image_of))
    else:
        buffer = ReplayBuffer(SHAPE, num_classes, max_size)
    learner = StreamingLearner(net, optimizer, codec, buffer, np.random.default_rng(seed), replays_per_step=replays,
                               insert_first=insert_first)
    return learner, image_codes, image_of


def loss_of(learner, seen):
    def make_loss(batch):
        seen.append(batch)
        return nn.functional.cross_entropy(learner.plastic_net(batch.maps), batch.labels)
    return make_loss


def test_shared_codes_are_read_through_each_examples_image():
    learner, image_codes, image_of = make_learner(buffer_kind="shared")
    learner.store(None, np.arange(10) % 3, np.arange(10))
    seen = []
    learner.step(image_codes[image_of[10]], 1, 10, loss_of(learner, seen))
    batch, = seen
    assert batch.ids[0] == 10 and len(batch.ids) == 4
    want = learner.codec.decode_maps(image_codes[torch.from_numpy(image_of[batch.ids])])
    assert torch.equal(batch.maps, want)
    assert batch.labels.tolist() == [1] + [int(i) % 3 for i in batch.ids[1:]]
    assert learner.buffer.codes is None  # no copy of any code


def test_insert_before_or_after_the_draw():
    """VQA inserts first (the new example may be replayed); the image experiments insert after the step."""
    for insert_first in (False, True):
        learner, image_codes, _ = make_learner(insert_first=insert_first, replays=5)
        learner.store(image_codes[:2], [0, 1], [100, 101])
        seen = []
        learner.step(image_codes[2], 2, 7, loss_of(learner, seen))
        replayed = set(seen[0].ids[1:].tolist())
        assert replayed == ({100, 101, 7} if insert_first else {100, 101})
        assert sorted(learner.buffer.ids[:len(learner)].tolist()) == [7, 100, 101]


def test_no_buffer_is_fine_tuning():
    learner, image_codes, _ = make_learner(buffer_kind="none")
    seen = []
    loss = learner.step(image_codes[0], 1, 0, loss_of(learner, seen))
    assert torch.isfinite(loss) and len(seen[0].ids) == 1 and len(learner) == 0


@pytest.mark.parametrize("kind", ["codes", "shared"])
def test_state_round_trip_continues_the_same_run(kind):
    """A learner restored from its state_dict takes the same steps as the one that kept going."""
    learner, image_codes, image_of = make_learner(buffer_kind=kind, max_size=12, insert_first=kind == "shared")
    codes_of = (lambda i: image_codes[image_of[i]])
    learner.store(None if kind == "shared" else torch.stack([codes_of(i) for i in range(8)]),
                  np.arange(8) % 3, np.arange(8))
    for i in range(8, 14):
        learner.step(codes_of(i), i % 3, i, loss_of(learner, []))
    stream = io.BytesIO()
    torch.save(learner.state_dict(), stream)
    stream.seek(0)
    state = torch.load(stream, weights_only=True)
    twin, _, _ = make_learner(buffer_kind=kind, max_size=12, insert_first=kind == "shared")
    with torch.no_grad():  # a twin that differs in everything the state must restore
        for p in twin.plastic_net.parameters():
            p.add_(1.0)
    twin.rng = np.random.default_rng(99)
    twin.load_state_dict(state)
    losses = [[], []]
    for i in range(14, 30):  # the buffer is full: every step evicts
        for k, one in enumerate((learner, twin)):
            losses[k].append(float(one.step(codes_of(i), i % 3, i, loss_of(one, []))))
    assert losses[0] == losses[1]
    for a, b in zip(learner.plastic_net.parameters(), twin.plastic_net.parameters()):
        assert torch.equal(a, b)
    assert np.array_equal(learner.buffer.ids[:12], twin.buffer.ids[:12])
    assert learner.rng.bit_generator.state == twin.rng.bit_generator.state


def test_reference_buffer_bytes_per_question():
    """A question in a VQA buffer costs its label, id and class slot: ~10 bytes on the device and on disk."""
    questions = 20_000
    codes = torch.zeros((500, 14, 14, 32), dtype=torch.uint8)
    buffer = ReplayBuffer((14, 14, 32), 28, shared_codes=SharedCodes(codes, np.arange(questions) % 500))
    buffer.add_batch(None, np.arange(questions) % 28, np.arange(questions))
    assert buffer.nbytes() / questions <= 16
    stream = io.BytesIO()
    torch.save(buffer.state_dict(), stream)
    assert len(stream.getvalue()) / questions <= 16
    stream.seek(0)
    restored = ReplayBuffer((14, 14, 32), 28, shared_codes=SharedCodes(codes, np.arange(questions) % 500))
    restored.load_state_dict(torch.load(stream, weights_only=True))
    restored.check_invariants()
    with pytest.raises(ValueError, match="kind"):
        ReplayBuffer((14, 14, 32), 28).load_state_dict(buffer.state_dict())


def test_experiments_do_not_reach_into_the_buffer():
    """Only remind/ samples from or reads a replay buffer's arrays; the experiments go through the learner."""
    pattern = re.compile(r"\.sample\(|replay_buffer\.(codes|labels|ids)|buffer\.(codes|labels|ids|gather)\b")
    offenders = []
    for folder in ("image_classification_experiments", "vqa_experiments"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_presets_fill_the_flags_and_explicit_flags_win():
    from image_classification_experiments import imagenet_experiment as ie
    from image_classification_experiments.configs import PRESETS, config_from_args

    base = ["--images_dir", "x", "--label_dir", "x", "--classifier_ckpt", "x.pth"]
    args = ie.parse_args(ie.get_args_parser(), base + ["--preset", "imagenet_paper"])
    config = config_from_args(args, lr_examples_per_class=1300)
    assert config == PRESETS["imagenet_paper"]
    assert (config.max_buffer_size, config.use_mixup, config.use_random_resized_crops) == (959_665, True, True)
    args = ie.parse_args(ie.get_args_parser(), base + ["--preset", "digits_demo", "--rehearsal_samples", "7"])
    assert (args.num_classes, args.rehearsal_samples, args.lr_examples_per_class, args.use_mixup) == (10, 7, "auto",
                                                                                                     True)


def test_restoring_global_rng_of_a_machine_with_more_gpus(monkeypatch):
    """A state saved on a machine with 3 GPUs resumes on one with 1: only the GPU this machine has is set."""
    learner, _, _ = make_learner()
    state = learner.state_dict()
    state["cuda_rng"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(3)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda rng_state, device: calls.append((device, rng_state)))
    before = torch.get_rng_state()
    learner.load_state_dict(state)  # an embedded learner: nothing global is touched
    assert calls == [] and torch.equal(torch.get_rng_state(), before)
    learner.load_state_dict(state, restore_global_rng=True)
    assert [device for device, _ in calls] == [0] and torch.equal(calls[0][1], state["cuda_rng"][0])
