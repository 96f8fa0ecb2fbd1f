"""Models: architectures as the paper defines them, normalisation inside, clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advls.models import MODELS, create, num_parameters

# Parameter counts of the paper's architectures, worked out by hand from the layer sizes.
EXPECTED_PARAMETERS = {
    "linear": 784 * 10 + 10,
    "mlp": (784 * 500 + 500) + (500 * 256 + 256) + (256 * 10 + 10),
    "lenet-mnist": (1 * 10 * 25 + 10) + (10 * 20 * 25 + 20) + (320 * 50 + 50) + (50 * 10 + 10),
    # Gowal et al.'s small CNN: 28 -> 13 (4x4, stride 2) -> 10 (4x4), 32 x 10 x 10 = 3200.
    "cnn-small": (1 * 16 * 16 + 16) + (16 * 32 * 16 + 32) + (3200 * 100 + 100) + (100 * 10 + 10),
    "lenet": (3 * 6 * 25 + 6)
    + (6 * 16 * 25 + 16)
    + (400 * 120 + 120)
    + (120 * 84 + 84)
    + (84 * 10 + 10),
    "resnet18": 11_173_962,  # the well-known figure for CIFAR ResNet-18 with 10 classes
}


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_match_the_architectures(name: str) -> None:
    assert num_parameters(create(name)) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_shape_and_inputs_untouched(name: str) -> None:
    model = create(name, num_classes=7).eval()
    shape = MODELS[name][1]
    x = torch.rand(3, *shape)
    before = x.clone()
    logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.equal(x, before)


def test_normalisation_lives_inside_the_model() -> None:
    torch.manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = create("lenet", mean=mean, std=std).eval()
    x = torch.rand(4, 3, 32, 32)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net(manual))
    # The statistics are buffers, so they are saved with the weights.
    assert set(model.state_dict()) >= {"normalize.mean", "normalize.std"}


@settings(max_examples=15, deadline=None)
@given(
    channels=st.sampled_from([1, 3]),
    size=st.integers(16, 40),
    classes=st.integers(2, 12),
    name=st.sampled_from(["linear", "mlp", "lenet-mnist", "lenet"]),
)
def test_any_reasonable_input_shape(channels: int, size: int, classes: int, name: str) -> None:
    model = create(name, num_classes=classes, input_shape=(channels, size, size)).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, classes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vgg"}, "must be one of linear, mlp, lenet-mnist, cnn-small, lenet, resnet18"),
        ({"name": "mlp", "num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"name": "lenet", "mean": (0.5,), "std": (0.5,)}, "one value per input channel"),
        ({"name": "lenet", "input_shape": (3, 8, 8)}, "at least 16x16"),
        ({"name": "mlp", "mean": (0.5,), "std": (0.0,)}, "std > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(2, 9),
    width=st.integers(2, 9),
    levels=st.integers(1, 4),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_pooling_equals_max_pool2d_value_for_value(
    height: int, width: int, levels: int, nan: bool, seed: int
) -> None:
    """Odd sizes (floor mode), ties (few distinct values) and NaNs, as ``max_pool2d`` has them."""
    from advls.models import max_pool_2x2

    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (2, 3, height, width), generator=generator).float()
    if nan:
        x[0, 1, 0, 0] = float("nan")
    with torch.no_grad():
        fast = max_pool_2x2(x)
    assert torch.equal(fast.isnan(), torch.nn.functional.max_pool2d(x, 2).isnan())
    assert torch.equal(fast.nan_to_num(-1.0), torch.nn.functional.max_pool2d(x, 2).nan_to_num(-1.0))


def test_pooling_gradient_goes_to_one_maximum_as_max_pool2d_sends_it() -> None:
    """Ties (a constant window, as MNIST's background gives) keep max_pool2d's gradient."""
    from advls.models import max_pool_2x2

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 2:, 2:] = torch.tensor([[1.0, 3.0], [2.0, 0.5]])
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    (grad_ours,) = torch.autograd.grad(max_pool_2x2(ours).sum(), ours)
    (grad_theirs,) = torch.autograd.grad(torch.nn.functional.max_pool2d(theirs, 2).sum(), theirs)
    assert torch.equal(grad_ours, grad_theirs)
    assert int((grad_ours[0, 0, :2, :2] != 0).sum()) == 1  # one tied zero gets it, not all four


@pytest.mark.parametrize("name", ["lenet-mnist", "lenet"])
def test_lenet_logits_agree_with_and_without_gradient_recording(name: str) -> None:
    model = create(name).eval()
    x = torch.rand(5, *MODELS[name][1])
    with torch.no_grad():
        fast = model(x)
    tracked = model(x.clone().requires_grad_())
    assert torch.equal(fast, tracked.detach())
