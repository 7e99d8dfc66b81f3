"""REMINDStrategy (remind.integrations.avalanche) against the project's own REMIND learner, on the digits.

Skipped when avalanche-lib (the ``avalanche`` extra) is not installed.
"""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import torchvision

pytest.importorskip("avalanche")

from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from helpers import one_torch_thread  # noqa: E402
from remind import REMIND, REMINDConfig, split_network  # noqa: E402
from remind.integrations.avalanche import REMINDStrategy  # noqa: E402

CLASS_ORDER = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]  # 4 base classes, then 2 + 2 + 2
PER_EXPERIENCE = [4, 2, 2, 2]
IMAGE_SIZE, MB = 32, 16
pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified")


class Digits(TensorDataset):
    """Images ``(N, 3, 32, 32)`` float32 and labels ``(N,)`` int64, with ``targets`` for Avalanche."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(images, labels)
        self.targets = labels.tolist()


def digits(per_class_train: int = 24, per_class_test: int = 8):
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(0)
    train, test = [], []
    for digit in range(10):
        members = rng.permutation(np.nonzero(data.target == digit)[0])
        test.extend(members[:per_class_test])
        train.extend(members[per_class_test:per_class_test + per_class_train])

    def tensors(rows):
        rows = np.sort(np.asarray(rows))
        x = torch.from_numpy(data.images[rows]).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        x = nnf.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
        x = ((x - 0.3) / 0.4).expand(-1, 3, -1, -1).contiguous()
        return Digits(x, torch.from_numpy(data.target[rows]).long())

    return tensors(train), tensors(test)


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


CONFIG = REMINDConfig(num_classes=10, num_codebooks=8, codebook_size=16, replays_per_step=10,
                      lr_examples_per_class=24, use_random_resized_crops=True, use_mixup=True, seed=0)


one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def benchmark():
    train, test = digits()
    return class_incremental_benchmark({"train": train, "test": test}, class_order=CLASS_ORDER,
                                       num_classes_per_exp=PER_EXPERIENCE)


def test_importing_remind_does_not_import_avalanche():
    code = "import sys, remind; assert not any(m.split('.')[0] == 'avalanche' for m in sys.modules), 'avalanche'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_strategy_matches_remind_learner(benchmark):
    net = network()
    G1, F1 = split_network(copy.deepcopy(net), "layer3", image_size=IMAGE_SIZE)
    G2, F2 = split_network(copy.deepcopy(net), "layer3", image_size=IMAGE_SIZE)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loss_metrics(stream=True),
                                 loggers=[])
    strategy = REMINDStrategy(trunk=G1, head=F1, config=CONFIG, device="cpu", train_mb_size=MB,
                              eval_mb_size=64, evaluator=evaluator)
    results = []
    for k, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        results.append(strategy.eval(benchmark.test_stream[:k + 1]))

    # The project's learner on the same experiences, in the same order, with the same batches of G.
    direct = REMIND(G2, F2, CONFIG, device="cpu")
    for k, experience in enumerate(benchmark.train_stream):
        pairs = [(x, y) for x, y, *_ in (experience.dataset[i] for i in range(len(experience.dataset)))]
        data = TensorDataset(torch.stack([x for x, _ in pairs]), torch.tensor([int(y) for _, y in pairs]))
        loader = DataLoader(data, batch_size=MB, shuffle=False)
        if k == 0:
            direct.fit_base(loader)
        else:
            direct.fit_stream(loader, verbose=False)

    own, theirs = dict(strategy.remind.classifier_F.named_parameters()), dict(direct.classifier_F.named_parameters())
    assert own.keys() == theirs.keys()
    worst = max(float((own[n] - theirs[n]).detach().abs().max()) for n in own)
    assert worst <= 1e-6, worst
    print(f"max |F_strategy - F_REMIND| = {worst:.3g}")
    assert len(strategy.remind.replay_buffer) == len(direct.replay_buffer) == sum(
        len(e.dataset) for e in benchmark.train_stream)
    np.testing.assert_array_equal(strategy.remind.class_steps, direct.class_steps)

    # Avalanche's metrics come from REMIND's predict path: stream accuracy = REMIND.evaluate on seen classes.
    name = "Top1_Acc_Stream/eval_phase/test_stream"
    assert name in results[-1] and "Loss_Stream/eval_phase/test_stream" in results[-1], sorted(results[-1])
    test_x = torch.cat([torch.stack([e.dataset[i][0] for i in range(len(e.dataset))])
                        for e in benchmark.test_stream])
    test_y = torch.cat([torch.tensor([int(e.dataset[i][1]) for i in range(len(e.dataset))])
                        for e in benchmark.test_stream])
    expected = direct.evaluate(DataLoader(TensorDataset(test_x, test_y), batch_size=64))["top1"]
    assert results[-1][name] * 100 == pytest.approx(expected, abs=1e-4)  # float32 vs float64 counts
    assert np.isfinite(results[-1]["Loss_Stream/eval_phase/test_stream"])
    all_metrics = strategy.evaluator.get_all_metrics()
    assert len(all_metrics[name][1]) == len(benchmark.train_stream)


def test_strategy_base_epochs_and_train_metrics(benchmark):
    """base_epochs > 0 trains F on the base codes in fit_base; training metrics see prequential outputs."""
    G, F = split_network(network(), "layer3", image_size=IMAGE_SIZE)
    before = {n: p.detach().clone() for n, p in F.named_parameters()}
    evaluator = EvaluationPlugin(accuracy_metrics(epoch=True, stream=True), loss_metrics(epoch=True),
                                 loggers=[])
    strategy = REMINDStrategy(trunk=G, head=F, config=CONFIG, device="cpu", train_mb_size=MB, base_epochs=2,
                              base_lr=0.05, evaluator=evaluator)
    strategy.train(benchmark.train_stream[0])
    assert strategy.base_initialised
    assert any(not torch.equal(before[n], p) for n, p in F.named_parameters())
    results = strategy.train(benchmark.train_stream[1])
    assert "Top1_Acc_Epoch/train_phase/train_stream" in results
    assert np.isfinite(results["Loss_Epoch/train_phase/train_stream"])
    assert len(strategy.remind.replay_buffer) == sum(len(benchmark.train_stream[k].dataset) for k in (0, 1))


def test_example_remind_beats_naive_and_replay(tmp_path):
    """examples/avalanche_digits.py at a short schedule: REMIND at least 20 points above Avalanche's Naive."""
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import avalanche_digits
    finally:
        sys.path.pop(0)
    out = tmp_path / "avalanche_digits.json"
    assert avalanche_digits.main(["--epochs", "3", "--replays", "10", "--train_per_class", "60", "--threads", "1",
                                  "--out", str(out)]) == 0
    final = json.loads(out.read_text())["final"]
    assert final["REMIND"] >= final["Naive"] + 20, final
