"""One place to add a setting: samplers built from TrainConfig, flags derived from its fields."""
import argparse
from dataclasses import dataclass, fields

import numpy as np
import pytest
import scipy.sparse as sp

from xmcviz import cli, data
from xmcviz.core.config import MODEL, SAMPLING, TrainConfig, setting
from xmcviz.samplers import (COMMON_OPTIONS, SAMPLER_NAMES, SAMPLERS, SamplerEnv, WarmupSampler,
                             build_sampler, make_sampler, samplers_reading)
from xmcviz.softmax.trainer import SoftmaxConfig

SAMPLING_FIELDS = {f.name for f in fields(TrainConfig) if f.metadata["group"] == SAMPLING}


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)


class Recording:
    """A TrainConfig that notes which settings are read."""

    def __init__(self, config: TrainConfig) -> None:
        self._config, self.read = config, set()

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._config, name)


def _env(ds) -> SamplerEnv:
    freq = np.bincount(sp.csr_matrix(ds.Y_train).indices, minlength=ds.num_labels)
    return SamplerEnv(ds.num_labels, freq, ds, "cpu", dim=16)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_from_config_reads_exactly_the_declared_options(tiny, name):
    config = Recording(TrainConfig(sampler=name, negatives=8, mips_k=3, clusters=4, nprobe=2))
    sampler = SAMPLERS[name].from_config(config, _env(tiny))
    assert isinstance(sampler, SAMPLERS[name])
    assert config.read & SAMPLING_FIELDS == set(SAMPLERS[name].options)


def test_every_sampling_setting_is_read_by_some_sampler():
    declared = {o for cls in SAMPLERS.values() for o in cls.options}
    assert declared <= SAMPLING_FIELDS  # options name TrainConfig settings
    assert SAMPLING_FIELDS - set(COMMON_OPTIONS) == declared  # and no setting is read by none
    assert samplers_reading("mips_k") == ("top-uniform", "mips-s")
    assert samplers_reading("nprobe") == ("mips-a", "mips-s")
    assert "full" not in samplers_reading("negatives")
    assert samplers_reading("warmup_epochs") == SAMPLER_NAMES


def test_build_sampler_names_and_wraps(tiny):
    env = _env(tiny)
    s = build_sampler(TrainConfig(sampler="mips-s", negatives=8, mips_k=3, warmup_epochs=1), env)
    assert isinstance(s, WarmupSampler) and s.inner.k == 3 and s.name == "mips-s"
    assert build_sampler(TrainConfig(sampler="mips-a", negatives=8, mips_k=3), env).k == 8
    full = build_sampler(TrainConfig(sampler="full"), env)  # negatives=100 > L is not read
    assert full.num_negatives == tiny.num_labels - 1
    with pytest.raises(ValueError, match="unknown sampler 'hardest'"):
        build_sampler(TrainConfig(sampler="hardest"), env)
    # make_sampler is the same path
    m = make_sampler("top-uniform", num_labels=tiny.num_labels, num_negatives=8, mips_k=2)
    assert type(m) is SAMPLERS["top-uniform"] and m.k == 2


def test_validate_refuses_given_settings_the_sampler_does_not_read():
    TrainConfig(sampler="mips-s", mips_k=5, nprobe=2).validate(given=["sampler", "mips_k", "nprobe"])
    with pytest.raises(ValueError, match=r"^mips_k=5 not supported with sampler='uniform': "
                                         r"allowed with sampler top-uniform or mips-s$"):
        TrainConfig(mips_k=5).validate(given=["mips_k"])
    with pytest.raises(ValueError, match=r"mips_k=5 not supported with sampler='mips-a'"):
        TrainConfig(sampler="mips-a", mips_k=5, nprobe=2).validate(given=["mips_k", "nprobe"])
    with pytest.raises(ValueError, match=r"^clusters=4 not supported with sampler='top': allowed "
                                         r"with sampler mips-a or mips-s; nprobe=2 not supported"):
        TrainConfig(sampler="top", clusters=4, nprobe=2).validate(given=["clusters", "nprobe"])
    with pytest.raises(ValueError, match=r"negatives=10 not supported with sampler='full'"):
        TrainConfig(sampler="full", negatives=10).validate(given=["negatives"])
    # not given: a dict of settings shared by a grid over samplers is allowed
    TrainConfig(sampler="mips-a", mips_k=5).validate()
    TrainConfig(sampler="uniform", warmup_epochs=1).validate(given=["warmup_epochs", "lr", "seed"])
    # settings of the mlp: refused with the linear model
    TrainConfig(model="mlp", hidden=8).validate(given=["hidden"])
    with pytest.raises(ValueError, match=r"^hidden=8 not supported with model='linear': allowed "
                                         r"with model mlp; dropout=0.1 not supported"):
        TrainConfig(model="linear", hidden=8, dropout=0.1).validate(given=["hidden", "dropout"])


def _train_help() -> str:
    p = argparse.ArgumentParser()
    cli.add_train_arguments(p)
    return " ".join(p.format_help().split())


def test_every_setting_is_documented_and_has_a_flag():
    helptext = _train_help()
    for name, flds in cli.train_settings().items():
        assert any(f.metadata.get("help") for f in flds), name
        assert cli.flag_names(name)[0] in helptext
    assert "--dense-updates" in helptext and "--no-progress" in helptext and "-R" in helptext


def _argv(config, cls) -> list[str]:
    """The flags that give every setting of ``config`` that differs from ``cls``'s default."""
    argv = []
    for f in fields(cls):
        value = getattr(config, f.name)
        if value == f.default:
            continue
        flag = cli.flag_names(f.name)[0]
        if isinstance(value, bool):
            argv.append(flag)  # store_true, or the rename that turns a True default off
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return argv


def _changed(cls) -> object:
    """A ``cls`` whose every setting differs from its default (values need not be valid)."""
    kw = {}
    for f in fields(cls):
        kind, d = cli._value_type(cls, f.name), f.default
        choices = f.metadata.get("choices")
        if choices:
            kw[f.name] = next(c for c in choices if c != d)
        elif kind is bool:
            kw[f.name] = not d
        elif kind is tuple:
            kw[f.name] = (2, 4)
        elif kind is str:
            kw[f.name] = f"{d}-x"
        else:
            kw[f.name] = kind(3 if d is None else d + 3)
    return cls(**kw)


@pytest.mark.parametrize("cls", [TrainConfig, SoftmaxConfig])
def test_every_setting_round_trips_through_its_flag(cls):
    config = _changed(cls)
    argv = ["train", *(["--first-label-only"] if cls is SoftmaxConfig else []), *_argv(config, cls)]
    args = cli.build_parser().parse_args(argv)
    assert cli.config_from_args(args, cls) == config
    assert set(cli.given_settings(args)) == {f.name for f in fields(cls)}


def test_unset_flags_take_the_modes_defaults():
    args = cli.build_parser().parse_args(["train", "--data", "tiny"])
    assert cli.given_settings(args) == ["data"]
    assert cli.config_from_args(args) == TrainConfig(data="tiny")
    assert cli.config_from_args(args, SoftmaxConfig) == SoftmaxConfig(data="tiny")


@dataclass
class _Extended(TrainConfig):
    temperature: float = setting(1.0, "softmax temperature", group=MODEL, metavar="T")
    verbose: bool = setting(False, "say more", group=MODEL)


def test_a_new_field_becomes_a_flag_without_editing_the_cli(monkeypatch):
    monkeypatch.setattr(cli, "_config_classes", lambda: (_Extended, SoftmaxConfig))
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--temperature", "0.5", "--verbose"])
    config = cli.config_from_args(args)
    assert config.temperature == 0.5 and config.verbose is True
    assert "--temperature T softmax temperature (default 1.0)" in _train_help()


def test_settings_without_help_or_an_off_flag_are_refused(monkeypatch):
    @dataclass
    class NoHelp(TrainConfig):
        undocumented: int = 3

    @dataclass
    class OnByDefault(TrainConfig):
        fancy: bool = setting(True, "a fancy mode", group=MODEL)

    for cls, message in ((NoHelp, "'undocumented' has no help"),
                         (OnByDefault, "'fancy' defaults to True")):
        monkeypatch.setattr(cli, "_config_classes", lambda cls=cls: (cls, SoftmaxConfig))
        with pytest.raises(TypeError, match=message):
            cli.add_train_arguments(argparse.ArgumentParser())


def test_a_new_sampler_option_touches_only_its_sampler_and_the_config(monkeypatch, tiny):
    """A setting added to (a stand-in for) TrainConfig and read by (a stand-in for) one sampler
    gets a flag, is refused for the other samplers and reaches the sampler: nothing else edited."""
    from xmcviz import samplers
    from xmcviz.samplers import UniformSampler

    @dataclass
    class Config(TrainConfig):
        spread: float = setting(1.0, "how far the draws spread", group=SAMPLING, metavar="S")

    class SpreadUniform(UniformSampler):
        options = ("negatives", "spread")

        @classmethod
        def from_config(cls, config, env):
            sampler = cls(env.num_labels, config.negatives)
            sampler.spread = config.spread
            return sampler

    monkeypatch.setitem(samplers.SAMPLERS, "uniform", SpreadUniform)
    monkeypatch.setattr(cli, "_config_classes", lambda: (Config, SoftmaxConfig))
    assert "--spread S how far the draws spread (default 1.0) [with sampler uniform]" in _train_help()
    args = cli.build_parser().parse_args(["train", "--spread", "2.5", "-R", "8"])
    config = cli.config_from_args(args).validate(given=cli.given_settings(args))
    assert build_sampler(config, _env(tiny)).spread == 2.5
    args = cli.build_parser().parse_args(["train", "--sampler", "top", "--spread", "2.5"])
    with pytest.raises(ValueError, match=r"spread=2.5 not supported with sampler='top'.*"
                                         r"allowed with sampler uniform$"):
        cli.config_from_args(args).validate(given=cli.given_settings(args))
