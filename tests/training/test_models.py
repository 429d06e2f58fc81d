"""sheldon.training.models and the shared pieces of sheldon.training: device choice, bf16 switch, batches."""

from __future__ import annotations

import pytest
import torch

from sheldon.core.errors import StepError
from sheldon.training import Batches, bf16_enabled, select_device, shard
from sheldon.training.models import MLP, SmallCNN


@pytest.mark.parametrize("model", [SmallCNN(num_classes=7), MLP(num_classes=7, hidden=32, layers=3)])
def test_models_give_one_logit_per_class(model):
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 7)


def test_models_share_the_keys_the_config_sets():
    keys = {"num_classes": 10, "hidden": 64, "dropout": 0.1}
    assert SmallCNN(**keys) and MLP(**keys)  # so switching _target_ alone works


def test_an_mlp_without_layers_is_refused():
    with pytest.raises(ValueError, match="MLP needs layers >= 1"):
        MLP(layers=0)


def test_auto_device_falls_back_to_the_cpu_and_bf16_follows_the_gpu():
    device = select_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.type == expected
    assert bf16_enabled("auto", torch.device("cpu")) is False
    assert bf16_enabled("true", torch.device("cpu")) is True
    assert bf16_enabled("False", torch.device("cpu")) is False


def test_batches_shuffle_per_epoch_and_repeat_for_the_same_epoch():
    x, y = torch.arange(20.0)[:, None], torch.arange(20)
    batches = Batches(x, y, batch_size=8, seed=3)
    first = torch.cat([b for _, b in batches])
    again = torch.cat([b for _, b in batches])
    batches.set_epoch(1)
    other = torch.cat([b for _, b in batches])
    assert len(batches) == 3 and sorted(first.tolist()) == list(range(20))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_ddp_ranks_split_each_batch_of_one_process_between_them():
    x, y = torch.arange(21.0)[:, None], torch.arange(21)
    whole = [b for _, b in Batches(x, y, batch_size=8, seed=5)]
    ranks = [[b for _, b in Batches(x, y, batch_size=8, seed=5, rank=r, world=2)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)  # DDP needs the same number of steps
    for step, batch in enumerate(whole):
        assert sorted(torch.cat([ranks[0][step], ranks[1][step]]).tolist()) == sorted(batch.tolist())
    assert sorted(torch.cat([shard(x, y, r, 2)[1] for r in range(2)]).tolist()) == list(range(21))


def test_a_last_batch_too_small_for_every_rank_is_dropped():
    x, y = torch.arange(17.0)[:, None], torch.arange(17)
    assert len(Batches(x, y, batch_size=8, seed=0, world=1)) == 3
    assert len(Batches(x, y, batch_size=8, seed=0, rank=1, world=2)) == 2


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_device_that_is_absent_is_an_error(name):
    available = torch.cuda.is_available() if name == "cuda" else torch.backends.mps.is_available()
    if available:
        pytest.skip(f"this machine has {name}")
    with pytest.raises(StepError, match=f"^device={name} but"):
        select_device(name)
