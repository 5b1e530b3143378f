"""Every configuration refuses a learning rate that is not a finite number > 0: NaN slipped past
`lr <= 0` checks (NaN compares false) and trained or adapted into NaNs without an error."""

import math

import pytest

from fastfree.errors import FastFreeError
from fastfree.free.bell import BellConfig
from fastfree.free.config import FreeConfig
from fastfree.free.five import FiveConfig
from fastfree.metatest.protocol import MetaTestConfig
from fastfree.pool.optimizers import OptimizerSpec
from fastfree.pool.pretrain import PretrainConfig

BUILDERS = {
    "meta-test": lambda lr: MetaTestConfig(lr=lr),
    "FREE generator": lambda lr: FreeConfig(generator_lr=lr),
    "FREE learner": lambda lr: FreeConfig(learner_lr=lr),
    "pretrain": lambda lr: PretrainConfig(lr=lr),
    "optimiser": lambda lr: OptimizerSpec("adam", lr),
    "FIVE": lambda lr: FiveConfig(lr=lr),
    "BELL inner": lambda lr: BellConfig(inner_lr=lr),
    "BELL epsilon": lambda lr: BellConfig(epsilon=lr),
}


@pytest.mark.parametrize("lr", [math.nan, math.inf, 0.0, -0.01])
@pytest.mark.parametrize("what", BUILDERS)
def test_refused(what, lr):
    with pytest.raises(FastFreeError, match="finite"):
        BUILDERS[what](lr)


@pytest.mark.parametrize("what", BUILDERS)
def test_an_ordinary_rate_is_accepted(what):
    BUILDERS[what](0.01)
