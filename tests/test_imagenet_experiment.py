"""End-to-end tests of the streaming entry point ``imagenet_experiment.main(argv)`` on tiny digits (CPU).

The data are scikit-learn's digits written as an ImageNet-style ImageFolder (10 classes, 8 train and 2 val
images per class); the base-init checkpoint is a randomly initialised ``ResNet18ClassifyAfterLayer4_1``
(random BatchNorm statistics too, so that eval-mode and by-name loading are real checks). At
``--image_size 64`` G gives 512 x 2 x 2 maps; 16 centroids per codebook keep the PQ small.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F_nn

import remind.image as remind_module
from image_classification_experiments import imagenet_experiment as ie
from image_classification_experiments.make_digits_imagefolder import write_digits
from image_classification_experiments.REMINDModel import REMINDModel
from image_classification_experiments.resnet_models import (ROW_ORDER, ResNet18ClassifyAfterLayer4_0,
                                                             ResNet18ClassifyAfterLayer4_1)
from image_classification_experiments.utils_imagenet import (class_names_by_position, examples_per_class,
                                                             get_data_loader)
from remind.checkpoint import load_state
from remind.compute import COUNTS, read_records
from remind.pq import PQCodec
from helpers import assert_nested_equal, randomise

NUM_CLASSES = 10
BASE = 4
INCREMENT = 2
POINTS = [4, 6, 8, 10]
ARCH = "ResNet18ClassifyAfterLayer4_1"
KEYS = ("base_classes_top1", "non_base_classes_top1", "seen_classes_top1",
        "base_classes_top5", "non_base_classes_top5", "seen_classes_top5")


# ------------------------------------------------------------------ helpers
def _save_net(network: nn.Module, path: Path, arch: str | None, class_names: list | None = None) -> Path:
    """A checkpoint as train_base_init_network_from_scratch writes it (rows in class order) when
    ``class_names`` is given, else one that does not say (the run warns)."""
    obj = {"state_dict": network.state_dict()}
    if arch is not None:
        obj["arch"] = arch
    if class_names is not None:
        obj.update(row_order=ROW_ORDER, class_names=class_names)
    torch.save(obj, path)
    return path


def argv_for(digits: Path, ckpt: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--images_dir", str(digits), "--label_dir", str(digits), "--classifier_ckpt", str(ckpt),
            "--num_classes", str(NUM_CLASSES), "--base_init_classes", str(BASE),
            "--class_increment", str(INCREMENT), "--image_size", "64", "--num_workers", "0",
            "--device", "cpu", "--codebook_size", "16", "--rehearsal_samples", "5",
            "--use_random_resized_crops", "--use_mixup", "--lr_examples_per_class", "auto",
            "--save_dir", str(save_dir), *extra]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: relative path -> (size, mtime_ns, sha256) (None for folders)."""
    state = {}
    if not folder.exists():
        return state
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir():
            state[rel] = None
        else:
            stat = path.stat()
            state[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def link_copy(src: Path, dst: Path) -> Path:
    """Hard-link copy of a results folder (the program writes atomically, replacing links, never in place)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def val_labels(digits: Path) -> np.ndarray:
    return np.load(digits / "imagenet_indices" / "imagenet_val_labels.npy")


def train_labels(digits: Path) -> np.ndarray:
    return np.load(digits / "imagenet_indices" / "imagenet_train_labels.npy")


def load_preds(folder: Path, k: int) -> torch.Tensor:
    return torch.load(folder / f"preds_min_trained_0_max_trained_{k}.pth", weights_only=True)


def load_f(folder: Path, k: int) -> dict:
    return torch.load(folder / "remind_model" / f"remind_classifier_F_{k}.pth", weights_only=True)


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    return write_digits(str(tmp_path_factory.mktemp("digits_ie") / "digits"), per_class=10, pixels=32, seed=0)


@pytest.fixture(scope="session")
def ckpts(digits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpts_ie")
    torch.manual_seed(0)
    _save_net(randomise(ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES), 1), folder / "base.pth", ARCH,
              class_names_by_position(str(digits), str(digits), NUM_CLASSES))
    return folder


@pytest.fixture(scope="session")
def ckpt(ckpts) -> Path:
    return ckpts / "base.pth"


@pytest.fixture(scope="session")
def full_run(digits, ckpt, tmp_path_factory) -> Path:
    """Dir A: an uninterrupted run to 10 classes, every increment's state kept (the original's layout)."""
    save_dir = tmp_path_factory.mktemp("run_A") / "A"
    assert ie.main(argv_for(digits, ckpt, save_dir, "--keep_checkpoints", "all")) == 0
    return save_dir


@pytest.fixture(scope="session")
def interrupted_run(digits, ckpt, tmp_path_factory) -> Path:
    """A run stopped after the increment to 6 classes (rerun without --streaming_max_class goes on)."""
    save_dir = tmp_path_factory.mktemp("run_S") / "S"
    assert ie.main(argv_for(digits, ckpt, save_dir, "--streaming_max_class", "6")) == 0
    return save_dir


# ------------------------------------------------------------------ 1. a full run
def test_full_run_writes_every_evaluation(full_run, digits):
    labels_all = val_labels(digits)
    for n, k in enumerate(POINTS):
        acc = json.loads((full_run / f"accuracies_min_trained_0_max_trained_{k}.json").read_text())
        assert set(acc) == set(KEYS)
        for key in KEYS:
            assert all(isinstance(v, float) for v in acc[key]), key
            assert len(acc[key]) == (n if key.startswith("non_base") else n + 1), (k, key)
        preds = load_preds(full_run, k)
        seen = labels_all[labels_all < k]  # file order, as the val loader
        assert preds.dtype == torch.float32 and preds.shape == (len(seen), NUM_CLASSES)
        assert torch.isfinite(preds).all()
        torch.testing.assert_close(preds.sum(1), torch.ones(len(seen)), atol=1e-5, rtol=0)
        probas = preds.numpy()
        own = probas[np.arange(len(seen)), seen][:, None]
        above = (probas > own).sum(1)
        tied = (probas == own).sum(1) - 1
        base = seen < BASE
        for name, mask in (("base_classes", base), ("non_base_classes", ~base),
                           ("seen_classes", np.ones_like(base))):
            if name == "non_base_classes" and k == BASE:
                continue
            for topk in (1, 5):
                # saturated softmax rows can tie (exact 0.0 / 1.0); a tie at the boundary may count either way
                surely = 100.0 * (above + tied < topk)[mask].mean()
                maybe = 100.0 * (above < topk)[mask].mean()
                value = acc[f"{name}_top{topk}"][-1]
                assert surely - 1e-4 <= value <= maybe + 1e-4, (k, name, topk, surely, value, maybe)
                if np.all(tied[mask] == 0):
                    assert value == pytest.approx(surely, abs=1e-4)
        # earlier points are kept, unchanged
        if n:
            previous = json.loads((full_run / f"accuracies_min_trained_0_max_trained_{POINTS[n - 1]}.json")
                                  .read_text())
            for key in KEYS:
                assert acc[key][:-1] == previous[key]
        assert (full_run / "remind_model" / f"remind_classifier_F_{k}.pth").is_file()
        assert (full_run / "remind_model" / f"remind_buffer_{k}.pth").is_file()
    final = json.loads((full_run / "accuracies_min_trained_0_max_trained_10.json").read_text())
    assert len(final["seen_classes_top1"]) == 4 and len(final["non_base_classes_top1"]) == 3
    png = (full_run / "accuracy_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # no temporary files left behind
    assert not [p for p in full_run.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_full_run_writes_the_compute_record(full_run, digits):
    """compute.json: one record per evaluation point, its counts what the stream implies."""
    records = read_records(full_run)
    assert [r["position"] for r in records] == list(POINTS) and {r["unit"] for r in records} == {"classes"}
    train, val = train_labels(digits), val_labels(digits)
    evaluated = 0
    for record in records:
        k = record["position"]
        streamed = int(((train >= BASE) & (train < k)).sum())
        evaluated += int((val < k).sum())
        assert record["examples_streamed"] == streamed and record["eval_examples"] == evaluated
        # one step per streamed example, F on the new example and 5 replays (2 x 5 drawn, mixed in pairs)
        assert record["optimizer_updates"] == streamed and record["sample_passes"] == 6 * streamed
        seconds = record["seconds"]
        assert seconds["base_init"] > 0 and seconds["evaluation"] > 0 and seconds["offline"] == 0
        assert record["elapsed_seconds"] >= sum(seconds.values()) > 0
        assert record["peak_memory_bytes"] > 0 and record["device"] == "cpu"
        if k == BASE:
            assert record["examples_per_second"] is None and seconds["replay"] == 0
        else:
            assert min(seconds["data"], seconds["trunk"], seconds["replay"], seconds["checkpoint"]) > 0
            assert record["examples_per_second"] == pytest.approx(
                streamed / (seconds["data"] + seconds["trunk"] + seconds["replay"]), rel=1e-3)


def test_checkpoints_are_weights_only_and_complete(full_run, digits):
    f_state = load_f(full_run, 10)
    assert set(f_state) == {"model_state_dict", "optimizer_state_dict", "arch", "split_at"}
    assert (f_state["arch"], f_state["split_at"]) == (ARCH, "model.layer4.0")
    assert all(k.startswith(("model.layer4.1.", "model.fc.")) for k in f_state["model_state_dict"])
    tensors, meta = load_state(full_run / "remind_model" / "remind_buffer_10.pth")
    n_train = len(train_labels(digits))
    learner = tensors["learner"]
    codes = learner["buffer"]["codes"]
    assert codes.shape == (n_train, 2, 2, 32) and codes.dtype == torch.uint8
    assert learner["codec"]["centroids"].shape == (32, 16, 16)
    assert_state_equal(learner["plastic_net"], f_state["model_state_dict"])  # F's file and the run state agree
    assert meta["inc"] == 10 and meta["identity"]["num_codebooks"] == 32 and meta["identity"]["mode"] == "stream"


# ------------------------------------------------------------------ 2. resume determinism
def test_interrupted_then_resumed_equals_uninterrupted(full_run, digits, ckpt, tmp_path):
    b_dir = tmp_path / "B"
    assert ie.main(argv_for(digits, ckpt, b_dir, "--streaming_max_class", "6")) == 0
    model_dir = b_dir / "remind_model"
    # by default only the latest increment's state is kept, and every increment's F
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "eval_codes.pth", "remind_buffer_6.pth", "remind_classifier_F_4.pth", "remind_classifier_F_6.pth"]
    assert not (b_dir / "preds_min_trained_0_max_trained_8.pth").exists()
    assert ie.main(argv_for(digits, ckpt, b_dir)) == 0
    for k in POINTS:
        assert torch.equal(load_preds(full_run, k), load_preds(b_dir, k)), k
        assert (json.loads((full_run / f"accuracies_min_trained_0_max_trained_{k}.json").read_text())
                == json.loads((b_dir / f"accuracies_min_trained_0_max_trained_{k}.json").read_text()))
    a_f, b_f = load_f(full_run, 10), load_f(b_dir, 10)
    assert_state_equal(a_f["model_state_dict"], b_f["model_state_dict"])
    a_opt, b_opt = a_f["optimizer_state_dict"], b_f["optimizer_state_dict"]
    assert a_opt["state"].keys() == b_opt["state"].keys()
    for key in a_opt["state"]:
        assert torch.equal(a_opt["state"][key]["momentum_buffer"], b_opt["state"][key]["momentum_buffer"])
    a_t, a_meta = load_state(full_run / "remind_model" / "remind_buffer_10.pth")
    b_t, b_meta = load_state(model_dir / "remind_buffer_10.pth")
    assert_nested_equal(a_t, b_t)  # includes the generators' states
    a_compute, b_compute = a_meta.pop("compute"), b_meta.pop("compute")
    assert a_meta == b_meta
    # what the run spent: the resumed run counts exactly the uninterrupted run's work (its seconds differ)
    assert a_compute["counts"] == b_compute["counts"] and a_compute["counts"]["examples_streamed"] > 0
    assert [r["position"] for r in a_compute["records"]] == [r["position"] for r in b_compute["records"]]
    for a_record, b_record in zip(a_compute["records"], b_compute["records"]):
        assert {k: a_record[k] for k in COUNTS} == {k: b_record[k] for k in COUNTS}
    assert read_records(b_dir) == b_compute["records"]  # compute.json: written just before the state


def test_resume_full_path_into_fresh_dir_equals_uninterrupted(full_run, digits, ckpt, tmp_path):
    c_dir = tmp_path / "C"
    argv = argv_for(digits, ckpt, c_dir, "--resume_full_path", str(full_run / "remind_model"),
                    "--streaming_min_class", "6")
    before = snapshot(full_run)
    assert ie.main(argv) == 0
    assert snapshot(full_run) == before
    assert torch.equal(load_preds(full_run, 10), load_preds(c_dir, 10))
    assert torch.equal(load_preds(full_run, 8), load_preds(c_dir, 8))
    assert_state_equal(load_f(full_run, 10)["model_state_dict"], load_f(c_dir, 10)["model_state_dict"])
    assert (json.loads((full_run / "accuracies_min_trained_0_max_trained_10.json").read_text())
            == json.loads((c_dir / "accuracies_min_trained_0_max_trained_10.json").read_text()))
    assert sorted(p.name for p in (c_dir / "remind_model").iterdir()) == [
        "eval_codes.pth", "remind_buffer_10.pth", "remind_classifier_F_10.pth", "remind_classifier_F_8.pth"]


def test_rerun_of_crashed_resume_full_path_run_continues_from_its_own_checkpoint(full_run, digits, ckpt, tmp_path,
                                                                                 monkeypatch, capsys):
    """The run's own latest checkpoint wins over --resume_full_path: the same command, rerun after a crash
    that followed the increment to 8 classes, continues at 8 (not at --streaming_min_class 6)."""
    d_dir = tmp_path / "D"
    argv = argv_for(digits, ckpt, d_dir, "--resume_full_path", str(full_run / "remind_model"),
                    "--streaming_min_class", "6")
    checkpoint = ie.REMINDStream.checkpoint

    def crash_after_8(self, end, accuracies):
        checkpoint(self, end, accuracies)
        if end == 8:
            raise KeyboardInterrupt("killed after the increment to 8 classes")
    monkeypatch.setattr(ie.REMINDStream, "checkpoint", crash_after_8)
    with pytest.raises(KeyboardInterrupt):
        ie.main(argv)
    monkeypatch.setattr(ie.REMINDStream, "checkpoint", checkpoint)
    assert not (d_dir / "remind_model" / "remind_buffer_10.pth").exists()
    capsys.readouterr()
    assert ie.main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and str(d_dir / "remind_model" / "remind_buffer_8.pth") in out
    assert "learning classes 8-9" in out and "learning classes 6-7" not in out  # 6-7 is not learnt again
    assert torch.equal(load_preds(full_run, 10), load_preds(d_dir, 10))
    assert (json.loads((full_run / "accuracies_min_trained_0_max_trained_10.json").read_text())
            == json.loads((d_dir / "accuracies_min_trained_0_max_trained_10.json").read_text()))


def test_stored_test_codes_give_the_predictions_of_the_images(full_run, digits, ckpt, tmp_path, capsys):
    """The test images' codes are computed once (G and the codebooks are frozen after base init); every
    evaluation from them equals running G over the images again, bit for bit."""
    codes = load_state(full_run / "remind_model" / "eval_codes.pth")[0]
    assert sorted(codes["ids"].tolist()) == list(range(len(val_labels(digits))))  # each test image once
    e_dir = tmp_path / "E"
    capsys.readouterr()
    assert ie.main(argv_for(digits, ckpt, e_dir, "--eval_from_images")) == 0
    out = capsys.readouterr().out
    assert not (e_dir / "remind_model" / "eval_codes.pth").exists()
    for k in POINTS:
        assert torch.equal(load_preds(full_run, k), load_preds(e_dir, k)), k
        seen = int((val_labels(digits) < k).sum())
        assert f"evaluation: {seen} test examples ({seen} through G)" in out
    assert (json.loads((full_run / "accuracies_min_trained_0_max_trained_10.json").read_text())
            == json.loads((e_dir / "accuracies_min_trained_0_max_trained_10.json").read_text()))


# ------------------------------------------------------------------ 3. rerunning a finished run
def test_rerun_of_finished_run_changes_nothing(full_run, digits, ckpt, tmp_path, capsys):
    copy_dir = link_copy(full_run, tmp_path / "A_again")
    before = snapshot(copy_dir)
    capsys.readouterr()
    assert ie.main(argv_for(digits, ckpt, copy_dir)) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "remind_buffer_10.pth" in out
    assert snapshot(copy_dir) == before


# ------------------------------------------------------------------ 4. faithfulness through the real model
@pytest.fixture(scope="module")
def streamed_model(digits, ckpt):
    """A REMINDModel built from the fixture checkpoint, checked before and after one increment (4 -> 6)."""
    per_class = examples_per_class(train_labels(digits), NUM_CLASSES)
    model = REMINDModel(num_classes=NUM_CLASSES, classifier_ckpt=str(ckpt), device="cpu", num_samples=5,
                        use_mixup=True, codebook_size=16, use_random_resize_crops=True,
                        lr_examples_per_class=per_class, lr_step_size=2, seed=0)
    initial_f = copy.deepcopy(model.classifier_F.state_dict())
    fresh_lr = [model.current_lr(c) for c in range(NUM_CLASSES)]
    step_lrs = []
    original_step = model.optimizer.step

    def recording_step(*args, **kwargs):
        step_lrs.append([group["lr"] for group in model.optimizer.param_groups])
        return original_step(*args, **kwargs)

    model.optimizer.step = recording_step
    loader = lambda lo, hi: get_data_loader(str(digits), str(digits), "train", lo, hi, batch_size=16,  # noqa: E731
                                            image_size=64, num_workers=0)
    model.fit_pq(loader(0, BASE))
    loss = model.fit_incremental_batch(loader(BASE, BASE + INCREMENT), verbose=False)
    return dict(model=model, initial_f=initial_f, fresh_lr=fresh_lr, step_lrs=step_lrs, loss=loss,
                per_class=per_class)


def test_f_starts_from_the_checkpoint_tensors_by_name(streamed_model, ckpt):
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    initial = streamed_model["initial_f"]
    assert set(initial) == {k for k in state if k.startswith(("model.layer4.1.", "model.fc."))}
    for name, tensor in initial.items():
        assert torch.equal(tensor, state[name]), name
    layer4 = streamed_model["model"].classifier_F.model.layer4
    assert [name for name, _ in layer4.named_children()] == ["1"]  # the only block F keeps, by its own name
    assert torch.equal(initial["model.layer4.1.conv1.weight"], state["model.layer4.1.conv1.weight"])
    assert not torch.equal(initial["model.layer4.1.conv1.weight"], state["model.layer4.0.conv1.weight"])


def test_g_is_frozen_and_f_learns(streamed_model, ckpt):
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    model = streamed_model["model"]
    g_state = model.classifier_G.state_dict()
    g_names = {k[len("layers."):] for k in g_state}  # the network's own names, under G's "layers."
    expected = {k for k in state if not k.startswith(("model.layer4.1.", "model.fc."))}
    assert g_names == expected
    for key, tensor in g_state.items():  # unchanged after PQ training and streaming, BN statistics included
        assert torch.equal(tensor, state[key[len("layers."):]]), key
    assert all(not p.requires_grad for p in model.classifier_G.parameters())
    assert not model.classifier_G.training
    # G's forward is that of the full checkpointed network cut after layer4.0, in eval mode
    net = ResNet18ClassifyAfterLayer4_1(num_classes=NUM_CLASSES)
    net.load_state_dict(state)
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = net.model
    with torch.no_grad():
        want = m.layer4[0](m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    torch.testing.assert_close(model._features(x), want)
    final_f = model.classifier_F.state_dict()
    changed = [k for k in final_f if k.endswith("weight") and not torch.equal(final_f[k], state[k])]
    assert "model.fc.weight" in changed and "model.layer4.1.conv1.weight" in changed
    assert np.isfinite(streamed_model["loss"])


# ------------------------------------------------------------------ 6. per-class LR inside the model
def test_per_class_steps_and_lr(streamed_model, digits):
    model = streamed_model["model"]
    labels = train_labels(digits)
    streamed = labels[(labels >= BASE) & (labels < BASE + INCREMENT)]
    expected_steps = np.bincount(streamed, minlength=NUM_CLASSES)
    assert np.array_equal(model.class_steps, expected_steps)
    assert streamed_model["fresh_lr"] == [0.1] * NUM_CLASSES
    for c in range(BASE + INCREMENT, NUM_CLASSES):  # classes not streamed yet
        assert model.current_lr(c) == 0.1
    # the k-th step on class c used 0.1 * gamma_c ** (k // 2), gamma_c = exp(2 ln(0.001 / 0.1) / N_c)
    lrs = streamed_model["step_lrs"]
    assert len(lrs) == len(streamed)
    seen = {}
    for (lr,), label in zip(lrs, streamed.tolist()):
        k = seen.get(label, 0)
        gamma = np.exp(2 * np.log(0.001 / 0.1) / streamed_model["per_class"][label])
        assert lr == pytest.approx(0.1 * gamma ** (k // 2), rel=1e-9), (label, k)
        seen[label] = k + 1
    for c in range(BASE, BASE + INCREMENT):  # each class ran its 8 examples: 0.1 -> 0.001
        assert model.current_lr(c) == pytest.approx(0.001, rel=1e-9)


def test_class_steps_in_the_run_checkpoint(full_run, digits):
    tensors, _ = load_state(full_run / "remind_model" / "remind_buffer_10.pth")
    labels = train_labels(digits)
    expected = np.bincount(labels[labels >= BASE], minlength=NUM_CLASSES)
    assert np.array_equal(tensors["class_steps"].numpy(), expected)
    assert expected[:BASE].sum() == 0 and (expected[BASE:] == 8).all()


# ------------------------------------------------------------------ 5. the replay step
def _model_with_buffer(ckpt: Path, stored: int, num_samples: int, use_mixup: bool, crops: bool,
                       alpha: float = 0.5) -> REMINDModel:
    model = REMINDModel(num_classes=NUM_CLASSES, classifier_ckpt=str(ckpt), device="cpu",
                        num_samples=num_samples, use_mixup=use_mixup, mixup_alpha=alpha, codebook_size=16,
                        use_random_resize_crops=crops, lr_examples_per_class=8, seed=3)
    gen = torch.Generator().manual_seed(5)
    model.start_from(PQCodec(torch.randn(32, 16, 16, generator=gen), device="cpu"), (2, 2, 32))
    codes = torch.randint(0, 16, (stored, 2, 2, 32), generator=gen, dtype=torch.uint8)
    model.replay_buffer.add_batch(codes, np.arange(stored) % NUM_CLASSES, np.arange(stored))
    return model


class _Spy:
    """Records F's inputs/outputs and the buffer's sampled slots around one replay step."""

    def __init__(self, model: REMINDModel):
        self.inputs, self.outputs, self.slots = [], [], []

        def hook(module, args, out):  # returns None: the output is left as it is
            self.inputs.append(args[0].detach().clone())
            self.outputs.append(out.detach().clone())

        model.classifier_F.register_forward_hook(hook)
        sample = model.replay_buffer.sample

        def spying_sample(count, rng):
            slots = sample(count, rng)
            self.slots.append((count, np.array(slots)))
            return slots

        model.replay_buffer.sample = spying_sample


def test_mixup_step_draws_2r_distinct_slots_and_mixes_them(ckpt, monkeypatch):
    model = _model_with_buffer(ckpt, stored=10, num_samples=5, use_mixup=True, crops=True)
    spy = _Spy(model)
    crops_in, crops_out, lams = [], [], []
    real_crop, real_lam = remind_module.random_resized_crop, remind_module.sample_mixup_lambda

    def crop(maps, rng):
        out = real_crop(maps, rng)
        crops_in.append(maps.clone())
        crops_out.append(out.clone())
        return out

    def lam_draw(rng, alpha):
        lam = real_lam(rng, alpha)
        lams.append(lam)
        return lam

    monkeypatch.setattr(remind_module, "random_resized_crop", crop)
    monkeypatch.setattr(remind_module, "sample_mixup_lambda", lam_draw)
    new_codes = torch.randint(0, 16, (2, 2, 32), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    new_label = 7
    loss = float(model.replay_step(new_codes, new_label))

    (count, slots), = spy.slots
    assert count == 10 and len(slots) == 10 and len(set(slots.tolist())) == 10
    assert set(slots.tolist()) <= set(range(10))
    # what was cropped: the new example's decoded codes, then the 10 replayed ones, in slot order
    stored_codes = model.replay_buffer.codes[:10]
    want_maps = model.pq.decode_maps(torch.cat([new_codes[None], stored_codes[torch.from_numpy(slots)]]))
    assert torch.equal(crops_in[0], want_maps)
    lam, = lams
    assert 0.0 <= lam <= 1.0
    maps = crops_out[0]
    (inputs,), (output,) = spy.inputs, spy.outputs
    assert inputs.shape == (6, 512, 2, 2)
    torch.testing.assert_close(inputs[0], maps[0], rtol=0, atol=0)  # the new example is not mixed
    torch.testing.assert_close(inputs[1:], lam * maps[1:6] + (1 - lam) * maps[6:11])
    stored_labels = torch.from_numpy(model.replay_buffer.labels[:10].astype(np.int64))
    y_a = torch.cat([torch.tensor([new_label]), stored_labels[slots[:5]]])
    y_b = torch.cat([torch.tensor([new_label]), stored_labels[slots[5:]]])
    want_loss = (lam * F_nn.cross_entropy(output, y_a, reduction="none")
                 + (1 - lam) * F_nn.cross_entropy(output, y_b, reduction="none")).mean()
    assert loss == pytest.approx(float(want_loss), rel=1e-5)
    assert model.class_steps[new_label] == 1 and model.class_steps.sum() == 1


def test_fewer_stored_than_requested_replays_all_stored(ckpt):
    model = _model_with_buffer(ckpt, stored=3, num_samples=5, use_mixup=False, crops=False)
    spy = _Spy(model)
    new_codes = torch.zeros(2, 2, 32, dtype=torch.uint8)
    loss = float(model.replay_step(new_codes, 1))
    assert np.isfinite(loss)
    (_, slots), = spy.slots
    assert sorted(slots.tolist()) == [0, 1, 2]
    inputs, = spy.inputs
    assert inputs.shape[0] == 4
    want = model.pq.decode_maps(torch.cat([new_codes[None], model.replay_buffer.codes[:3][torch.from_numpy(slots)]]))
    assert torch.equal(inputs, want)
    # with mixup, an odd number stored: pairs only (new + 1 mixed pair), no error
    model = _model_with_buffer(ckpt, stored=3, num_samples=5, use_mixup=True, crops=True)
    spy = _Spy(model)
    assert np.isfinite(float(model.replay_step(new_codes, 1)))
    assert spy.inputs[0].shape[0] == 2
    # an empty buffer: the new example alone
    model = _model_with_buffer(ckpt, stored=0, num_samples=5, use_mixup=True, crops=True)
    spy = _Spy(model)
    assert np.isfinite(float(model.replay_step(new_codes, 1)))
    assert spy.inputs[0].shape[0] == 1


def test_fine_tune_with_mixup_runs(digits, ckpt, tmp_path):
    save_dir = tmp_path / "finetune"
    argv = argv_for(digits, ckpt, save_dir, "--streaming_max_class", "6")
    argv[argv.index("--rehearsal_samples") + 1] = "0"
    assert ie.main(argv) == 0
    preds = load_preds(save_dir, 6)
    assert torch.isfinite(preds).all()
    assert (save_dir / "remind_model" / "remind_buffer_6.pth").is_file()


# ------------------------------------------------------------------ 7. bad inputs
def assert_rejected(argv: list[str], capfd, folders: list[Path], *needles: str) -> str:
    """main(argv) exits 2 with one 'error:' line naming the problem and touches none of ``folders``."""
    before = [snapshot(f) for f in folders]
    existed = [f.exists() for f in folders]
    capfd.readouterr()
    assert ie.main(argv) == 2
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert [f.exists() for f in folders] == existed
    assert [snapshot(f) for f in folders] == before
    return lines[0]


@pytest.fixture
def results(interrupted_run, tmp_path) -> Path:
    """A private copy of a run interrupted at 6 classes: without the error, a rerun would go on to 10."""
    return link_copy(interrupted_run, tmp_path / "results")


def test_missing_images_dir(digits, ckpt, results, capfd, tmp_path):
    missing = tmp_path / "no_such_images"
    fresh = tmp_path / "fresh_results"
    argv = argv_for(digits, ckpt, results)
    argv[argv.index("--images_dir") + 1] = str(missing)
    assert_rejected(argv, capfd, [results], str(missing))
    argv[argv.index("--save_dir") + 1] = str(fresh)
    assert_rejected(argv, capfd, [fresh], str(missing))  # the results folder is not even created


def test_images_dir_with_empty_class_folders(digits, ckpt, results, capfd, tmp_path):
    empty = tmp_path / "empty_images"
    for split in ("train", "val"):
        for k in range(NUM_CLASSES):
            (empty / split / f"digit_{k}").mkdir(parents=True)
    shutil.copytree(digits / "val", empty / "val", dirs_exist_ok=True)  # val has images, train none
    argv = argv_for(digits, ckpt, results)
    argv[argv.index("--images_dir") + 1] = str(empty)
    assert_rejected(argv, capfd, [results], str(empty / "train"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_label_file_not_matching_the_folder(digits, ckpt, results, capfd, tmp_path, split):
    labels_dir = tmp_path / "labels"
    shutil.copytree(digits / "imagenet_indices", labels_dir / "imagenet_indices")
    path = labels_dir / "imagenet_indices" / f"imagenet_{split}_labels.npy"
    np.save(path, np.load(path)[:-1])
    argv = argv_for(digits, ckpt, results)
    argv[argv.index("--label_dir") + 1] = str(labels_dir)
    assert_rejected(argv, capfd, [results], f"imagenet_{split}_labels.npy")


def test_missing_label_files(digits, ckpt, results, capfd, tmp_path):
    argv = argv_for(digits, ckpt, results)
    argv[argv.index("--label_dir") + 1] = str(tmp_path)
    assert_rejected(argv, capfd, [results], "imagenet_train_labels.npy")


@pytest.mark.parametrize("extra", [
    ("--streaming_max_class", "12", "--num_classes", "12"),
    ("--base_init_classes", "11"),
    ("--streaming_max_class", "11"),  # beyond --num_classes 10
])
def test_class_range_outside_the_data(digits, ckpt, results, capfd, extra):
    line = assert_rejected(argv_for(digits, ckpt, results, *extra), capfd, [results])
    assert "class" in line and ("10" in line or "11" in line)


def test_checkpoint_of_another_architecture(digits, ckpts, results, capfd):
    torch.manual_seed(1)
    other = _save_net(ResNet18ClassifyAfterLayer4_0(num_classes=NUM_CLASSES), ckpts / "l40.pth",
                      "ResNet18ClassifyAfterLayer4_0")
    assert_rejected(argv_for(digits, other, results), capfd, [results], "ResNet18ClassifyAfterLayer4_0")
    # the same weights without an 'arch' entry: caught by the by-name check (layer4.1 is missing)
    bare = _save_net(ResNet18ClassifyAfterLayer4_0(num_classes=NUM_CLASSES), ckpts / "l40_bare.pth", None)
    assert_rejected(argv_for(digits, bare, results), capfd, [results], "layer4.1", str(bare))


def test_checkpoint_with_other_num_classes(digits, ckpts, results, capfd):
    torch.manual_seed(2)
    five = _save_net(ResNet18ClassifyAfterLayer4_1(num_classes=5), ckpts / "five.pth", ARCH)
    assert_rejected(argv_for(digits, five, results), capfd, [results], "fc", str(five))


@pytest.mark.parametrize("extra, needle", [
    (("--num_channels", "512", "--num_codebooks", "7"), "num_codebooks"),
    (("--codebook_size", "100"), "codebook_size"),
    (("--num_channels", "256"), "num_channels"),  # G gives 512 channels
    (("--spatial_feat_dim", "7"), "spatial_feat_dim"),  # 2x2 at 64 px
    (("--lr_examples_per_class", "many"), "lr_examples_per_class"),
])
def test_bad_pq_and_shape_flags(digits, ckpt, results, capfd, extra, needle):
    argv = argv_for(digits, ckpt, results)
    for flag in extra[::2]:  # replace flags already in the common list
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    assert_rejected(argv + list(extra), capfd, [results], needle)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty", "missing"])
def test_unreadable_classifier_checkpoint(digits, ckpt, results, capfd, tmp_path, damage):
    bad = tmp_path / f"{damage}.pth"
    data = ckpt.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[:len(data) // 2])
    elif damage == "random_bytes":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    assert_rejected(argv_for(digits, bad, results), capfd, [results], str(bad))


def test_truncated_buffer_of_interrupted_run(digits, ckpt, interrupted_run, capfd, tmp_path):
    """A damaged last checkpoint stops the rerun (exit 2, the file named); nothing else is touched.

    The writes are atomic (temporary file + rename), so a crash cannot leave a truncated checkpoint: a damaged
    one was damaged afterwards, and silently falling back to the previous increment would hide that (and then
    overwrite the evidence). The user deletes the file to resume from the previous increment.
    """
    results = tmp_path / "results"
    shutil.copytree(interrupted_run, results)
    buffer = results / "remind_model" / "remind_buffer_6.pth"
    data = buffer.read_bytes()
    buffer.write_bytes(data[:len(data) // 2])
    assert_rejected(argv_for(digits, ckpt, results), capfd, [results], str(buffer), "delete")
    # as the message says: deleting it resumes from the previous increment
    buffer.unlink()
    assert ie.main(argv_for(digits, ckpt, results, "--streaming_max_class", "6")) == 0
    assert torch.equal(load_preds(results, 6), load_preds(interrupted_run, 6))


def test_truncated_f_checkpoint_of_interrupted_run(digits, ckpt, interrupted_run, capfd, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(interrupted_run, results)
    f_path = results / "remind_model" / "remind_classifier_F_6.pth"
    data = f_path.read_bytes()
    f_path.write_bytes(data[:len(data) // 2])
    # F is also in the run state (remind_buffer_6.pth): the rerun continues and re-writes the damaged copy
    assert ie.main(argv_for(digits, ckpt, results, "--streaming_max_class", "6")) == 0
    assert "re-writing it from the run state" in capfd.readouterr().out
    import io
    original = torch.load(io.BytesIO(data), weights_only=True)
    assert_state_equal(torch.load(f_path, weights_only=True)["model_state_dict"], original["model_state_dict"])


def test_resume_with_other_num_codebooks(digits, ckpt, results, capfd):
    assert_rejected(argv_for(digits, ckpt, results, "--num_codebooks", "16"), capfd, [results], "num_codebooks")


def test_resume_full_path_without_that_increment(digits, ckpt, interrupted_run, capfd, tmp_path):
    fresh = tmp_path / "C"
    argv = argv_for(digits, ckpt, fresh, "--resume_full_path", str(interrupted_run / "remind_model"),
                    "--streaming_min_class", "8")
    assert_rejected(argv, capfd, [fresh, interrupted_run], "remind_buffer_8.pth")


def test_resume_with_other_image_size(digits, ckpt, results, capfd):
    argv = argv_for(digits, ckpt, results)
    argv[argv.index("--image_size") + 1] = "32"  # 1x1 feature maps instead of 2x2
    line = assert_rejected(argv, capfd, [results])
    assert any(word in line for word in ("image_size", "feature map", "code shape", "1x1"))


# ------------------------------------------------------------------ any backbone
def test_any_torchvision_backbone_runs_base_init_then_the_stream(digits, tmp_path):
    """The base-init trainer trains --arch, the experiment cuts it at --split_at; both are recorded. (Other
    families are cut in tests/test_split.py; benchmarks/backbones_digits.py runs four of them end to end.)"""
    arch, split_at, codebooks = "mobilenet_v3_small", "features.3", 8
    from image_classification_experiments import train_base_init_network_from_scratch as base_init

    assert base_init.main(["--data", str(digits), "--labels_dir", str(digits), "--arch", arch,
                           "--base_max_class", str(BASE), "--num_classes", str(NUM_CLASSES), "--image_size", "64",
                           "--epochs", "1", "-b", "16", "-j", "0", "--device", "cpu",
                           "--save_dir", str(tmp_path / "base")]) == 0
    ckpt = tmp_path / "base" / f"best_{arch}_{BASE}.pth"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["arch"] == arch and "features.0.0.weight" in saved["state_dict"]
    save_dir = tmp_path / "run"
    assert ie.main(argv_for(digits, ckpt, save_dir, "--arch", arch, "--split_at", split_at,
                            "--num_codebooks", str(codebooks), "--codebook_size", "16")) == 0
    accuracies = json.loads((save_dir / f"accuracies_min_trained_0_max_trained_{NUM_CLASSES}.json").read_text())
    assert len(accuracies["seen_classes_top1"]) == len(POINTS)
    _, meta = load_state(save_dir / "remind_model" / f"remind_buffer_{NUM_CLASSES}.pth")
    identity = meta["identity"]
    assert (identity["arch"], identity["split_at"]) == (arch, split_at)
    channels, height, width = identity["map_shape"]
    assert channels % codebooks == 0 and meta["code_shape"] == [height, width, codebooks]
    f_state = load_f(save_dir, NUM_CLASSES)["model_state_dict"]
    assert f_state and all(not k.startswith(("features.0.", "features.1.")) for k in f_state)  # G's layers stay out
    # a rerun of the finished run finds every point done (the recorded identity matches)
    assert ie.main(argv_for(digits, ckpt, save_dir, "--arch", arch, "--split_at", split_at,
                            "--num_codebooks", str(codebooks), "--codebook_size", "16")) == 0
