"""Shared test helpers (imported as ``helpers``: pytest puts tests/ on sys.path)."""
import torch
import torch.nn as nn


def randomise(network: nn.Module, seed: int, weights: bool = False) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (and, with ``weights``, conv/linear weights),
    so that loading by name and eval mode are real tests rather than defaults that match by chance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.num_batches_tracked.fill_(3)
            elif weights and isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / module.weight[0].numel()) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return network


# Written out here, independently of vqa_experiments, so tests compare the code against the datasets' definitions.
CLEVR_TYPE = {"count": "count", "exist": "exist", "greater_than": "compare_integer",
              "less_than": "compare_integer", "equal_integer": "compare_integer",
              "equal_color": "compare_attribute", "equal_material": "compare_attribute",
              "equal_shape": "compare_attribute", "equal_size": "compare_attribute",
              "query_color": "query_attribute", "query_material": "query_attribute",
              "query_shape": "query_attribute", "query_size": "query_attribute"}
TDIUC_TYPES = {"object_presence", "counting", "color", "attribute", "object_recognition",
               "positional_reasoning", "absurd"}


def assert_nested_equal(a, b, path: str = "") -> None:
    """Two checkpoint trees (dicts and lists of tensors, strings and numbers) hold the same values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_nested_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            assert_nested_equal(x, y, f"{path}[{k}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


def one_torch_thread():
    """Generator for a module-scoped fixture: torch on one thread, restored after. On a loaded 2-core machine,
    more threads oversubscribe the CPU (the small convolutions of these tests ran 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
