import numpy as np
import pytest
import torch

from verispec.data import Split, load_data
from verispec.errors import UnsupportedError
from verispec.train import Arch, ArchConfig, EpsSchedule, LrSchedule, TrainConfig, train
from verispec.train.augment import random_shift


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Reference: out[i, j] = image[i - dy, j - dx], zero outside."""
    h, w = image.shape[-2:]
    out = np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = image[..., i - dy, j - dx]
    return out


def test_each_image_is_moved_by_one_shift_within_range():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.1, 1.0, (40, 2, 6, 7)).astype(np.float32)
    out = random_shift(torch.tensor(images), 2, torch.Generator().manual_seed(1)).numpy()
    seen = set()
    for img, moved in zip(images, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(moved, _shifted(img, dy, dx))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5  # shifts are drawn per image, not per batch


def test_zero_shift_is_the_identity_and_draws_repeat_per_seed():
    images = torch.rand(8, 1, 5, 5)
    assert random_shift(images, 0, torch.Generator()) is images
    a = random_shift(images, 1, torch.Generator().manual_seed(3))
    b = random_shift(images, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(UnsupportedError, match="image inputs"):
        random_shift(torch.rand(4, 64), 1, torch.Generator())
    with pytest.raises(UnsupportedError, match=r"\[0, 4\]"):
        random_shift(torch.rand(4, 1, 5, 5), 5, torch.Generator())


def test_training_with_shifts_is_deterministic_and_differs_from_without():
    train_data = load_data("sklearn:digits", Split.TRAIN).take(200)
    eval_data = load_data("sklearn:digits", Split.TEST).take(50)

    def run(shift: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(
            ArchConfig(Arch.MINMAX_MLP, width=16, depth=1),
            eps=EpsSchedule(0.3, warmup=0.0),
            lr=LrSchedule(3e-3),
            epochs=2,
            batch_size=64,
            shift=shift,
        )
        return train(cfg, train_data, eval_data)[0].state_dict()

    first, second, plain = run(1), run(1), run(0)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], plain[k]) for k in first)


def test_shifts_on_flat_inputs_are_refused_before_training():
    data = load_data("sklearn:digits", Split.TRAIN).take(20)
    flat = data.shaped((64,))
    cfg = TrainConfig(ArchConfig(Arch.MINMAX_MLP, width=8, depth=1), epochs=1, shift=1)
    with pytest.raises(UnsupportedError, match="image inputs"):
        train(cfg, flat, flat)
