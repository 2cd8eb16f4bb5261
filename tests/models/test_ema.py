import numpy as np
import torch

from dse.models.ema import EMA


def test_ema_warmup_follows_the_model_early():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = EMA(model, decay=0.9999)
    model.weight.data.fill_(1.0)
    ema.update(model)  # decay_1 = min(0.9999, 2 / 11)
    assert abs(ema.model.weight.item() - 9 / 11) < 1e-6
    for _ in range(99):
        ema.update(model)
    # decay_t = (1 + t) / (10 + t) -> the EMA weight is 1 - prod_t decay_t
    expected = 1 - np.prod([(1 + t) / (10 + t) for t in range(1, 101)])
    assert abs(ema.model.weight.item() - expected) < 1e-5
    assert not ema.model.weight.requires_grad
