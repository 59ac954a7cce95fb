"""SAT as building blocks: saliency sources, the SAT input, objectives."""
import pytest
import torch
import torch.nn.functional as F

import sat


def square_masks(n, side=16):
    masks = torch.zeros(n, 1, side, side)
    masks[:, :, 4:12, 4:12] = 1.0
    return masks


def test_masks_give_maps_in_range_that_follow_the_masks(test_set):
    x, y = test_set
    maps = sat.Saliency("masks")(x, y, masks=square_masks(len(x)))
    assert maps.shape == (len(x), 1, 16, 16)
    assert maps.min().item() >= -1 and maps.max().item() <= 1
    assert (maps[:, :, 4:12, 4:12] > maps[:, :, :2, :2].mean()).all()


def test_boxes_give_plus_one_inside_and_minus_one_outside(test_set):
    x, y = test_set
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0]]).expand(len(x), 1, 4).contiguous()
    maps = sat.Saliency("boxes")(x, y, boxes=boxes)
    assert torch.allclose(maps[:, :, 5:11, 5:11], torch.ones(1))
    assert torch.allclose(maps[:, :, :3, :3], -torch.ones(1))


def test_a_gradient_source_queries_the_teacher(model, test_set):
    x, y = test_set
    # `gradient` and `smoothgrad` differentiate the teacher given at the call;
    # guided backprop and Grad-CAM need a checkpoint of sat's own (config `teacher`).
    source = sat.Saliency("smoothgrad", samples=4)
    maps = source(x, y, teacher=model)
    assert maps.shape[0] == len(x) and maps.abs().max().item() <= 1
    assert maps.abs().sum().item() > 0
    with pytest.raises(sat.SatError, match="teacher="):
        source(x, y)


def test_perturb_follows_the_generator_and_stays_in_budget(test_set):
    x, _ = test_set
    s = sat.Saliency("masks")(x, torch.zeros(len(x), dtype=torch.long), masks=square_masks(len(x)))
    eps = 8 / 255
    run = lambda seed, **kw: sat.perturb(x, s, eps, 3, 10, generator=torch.Generator().manual_seed(seed), **kw)
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a - x).abs().max().item() <= eps + 1e-6
    assert a.min().item() >= 0 and a.max().item() <= 1
    # p = 1: the map itself, x − ε·S.
    full = run(1, probability=1.0)
    assert torch.allclose(full, (x - eps * s.expand_as(x)).clamp(0, 1), atol=1e-6)
    # The curriculum at epoch 0 takes random signs only: |x̃ − x| = ε off the box.
    start = sat.perturb(x, s, eps, 0, 10, generator=torch.Generator().manual_seed(3))
    inside = (x > eps) & (x < 1 - eps)
    assert torch.allclose((start - x).abs()[inside], torch.full_like(x[inside], eps), atol=1e-6)


def test_perturb_draws_per_sample_from_indices(test_set):
    x, _ = test_set
    s = torch.zeros(len(x), 1, 16, 16)
    whole = sat.perturb(x, s, 0.03, 0, 1, generator=torch.Generator().manual_seed(4))
    # The second half alone, with its indices, is perturbed as within the whole batch.
    half = len(x) // 2
    part = sat.perturb(x[half:], s[half:], 0.03, 0, 1, generator=torch.Generator().manual_seed(4),
                       indices=torch.arange(half, len(x)))
    assert torch.equal(part, whole[half:])


def test_ce_is_cross_entropy_and_backpropagates(model, test_set):
    x, y = test_set
    objective = sat.Objective("ce")
    loss = objective(model, x, x, y)
    assert abs(loss.item() - F.cross_entropy(model(x), y).item()) < 1e-5
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert objective.logits.shape == (len(x), 3)


def test_trades_and_rrr_give_finite_losses_with_a_graph(model, test_set):
    x, y = test_set
    adv = sat.Attack("pgd", model, steps=2)(x, y)
    trades = sat.Objective("trades", beta=6.0)(model, x, adv, y)
    assert trades.requires_grad and torch.isfinite(trades)
    maps = sat.Saliency("masks")(x, y, masks=square_masks(len(x)))
    rrr = sat.Objective("rrr")(model, x, x, y, maps)
    assert rrr.requires_grad and torch.isfinite(rrr)
    with pytest.raises(TypeError, match="no key `betta`"):
        sat.Objective("trades", betta=1.0)
