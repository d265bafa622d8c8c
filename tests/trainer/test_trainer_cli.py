"""The trainer's command line (train/cli.py): the seed's flags parse as the
seed's, and the parsed configuration is read-only — what depends on it is
derived once, never written back into a flag."""

from __future__ import annotations

import pickle

import pytest
import torch

from train.cli import RunConfig, parse_args

SEED_COMMAND = ["--train-dir", "t", "--val-dir", "v", "--base-op", "lars", "--bn-bias-separately", "--batch-size",
                "128", "--base-lr", "5.657", "--warmup-epochs", "0.3125", "--wd", "1e-4", "--lr-scaling", "keep"]


def test_the_seeds_command_line_parses_with_its_values():
    config = parse_args(SEED_COMMAND)
    assert (config.base_op, config.bn_bias_separately, config.batch_size) == ("lars", True, 128)
    assert (config.base_lr, config.warmup_epochs, config.wd, config.lr_scaling) == (5.657, 0.3125, 1e-4, "keep")


def test_the_configuration_refuses_to_be_rewritten():
    config = parse_args(SEED_COMMAND)
    with pytest.raises(AttributeError, match="read-only"):
        config.batch_size = 256
    assert config.batch_size == 128


def test_the_data_backend_default_is_derived_from_the_device():
    want = "gpu" if torch.cuda.is_available() else "pil"
    assert parse_args(SEED_COMMAND).data_backend == want
    assert parse_args([*SEED_COMMAND, "--no-cuda"]).data_backend == "pil"
    assert parse_args([*SEED_COMMAND, "--data-backend", "gpu", "--no-cuda"]).data_backend == "gpu"


def test_the_configuration_pickles_and_records_as_a_plain_dict():
    config = parse_args(SEED_COMMAND)
    again = pickle.loads(pickle.dumps(config))
    assert isinstance(again, RunConfig) and again.as_dict() == config.as_dict()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in config.as_dict().values())


def test_an_unknown_option_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no option 'learning_rate'"):
        parse_args(SEED_COMMAND).learning_rate


@pytest.mark.parametrize("impl,flags", [("fused", dict(fused=True, foreach=None)),
                                        ("foreach", dict(foreach=True, fused=False)),
                                        ("reference", dict(foreach=False, fused=False)),
                                        ("auto", dict(foreach=None, fused=None))])
def test_lamb_takes_each_optimizer_impl_as_its_path_flags(impl, flags):
    import torch

    from train.builders import make_optimizer

    args = parse_args([*SEED_COMMAND, "--base-op", "lamb", "--optimizer-impl", impl])
    opt = make_optimizer(args, torch.nn.Linear(3, 2), 0.01, torch.device("cpu"))
    assert type(opt).__name__ == "Lamb"
    assert {k: opt.defaults[k] for k in flags} == flags
