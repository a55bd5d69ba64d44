"""DINO loss, head, schedules and the optimisation pieces of the trainer, checked against hand computations."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pathgen.ssl.head import DINOHead, MultiCropModel
from pathgen.ssl.loss import DINOLoss, disentanglement_loss, koleo_loss
from pathgen.ssl.schedules import cosine_schedule, linear_warmup
from pathgen.ssl.trainer import CollapseMonitor, clip_gradients, param_groups, teacher_stats


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _hand_dino_loss(t, s, center, t_temp, s_temp, n_global, n_crops, batch):
    """DINO cross-entropy written out with loops: t [n_global*B, K], s [n_crops*B, K]."""
    total, terms = 0.0, 0
    for i in range(n_global):
        for j in range(n_crops):
            if i == j:
                continue
            pair = 0.0
            for b in range(batch):
                target = _softmax((t[i * batch + b] - center) / t_temp)
                log_p = np.log(_softmax(s[j * batch + b] / s_temp))
                pair += -sum(target[k] * log_p[k] for k in range(len(target)))
            total += pair / batch
            terms += 1
    return total / terms


def test_loss_matches_hand_computation_with_centering_and_sharpening():
    torch.manual_seed(0)
    batch, k, n_crops, n_global = 3, 7, 4, 2
    t = torch.randn(n_global * batch, k, dtype=torch.float64)
    s = torch.randn(n_crops * batch, k, dtype=torch.float64)
    loss_fn = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    center = torch.randn(1, k) * 0.5
    loss_fn.center.copy_(center)

    got = loss_fn(s, t, teacher_temp=0.05, n_student_crops=n_crops).item()
    want = _hand_dino_loss(t.numpy(), s.numpy(), center.double().numpy()[0], 0.05, 0.1, n_global, n_crops, batch)
    assert got == pytest.approx(want, rel=1e-5)
    # the centre moved to 0.9 * old + 0.1 * batch mean of the teacher logits
    expected_center = 0.9 * center + 0.1 * t.float().mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected_center)


def test_loss_is_fp32_inside_a_bf16_autocast_region():
    # the trainer's forward passes run under bf16 autocast on GPUs; the loss must not (bf16 resolves 0.06 near
    # ln(65536)). CPU autocast lowers einsum to bf16 as CUDA's does, so this checks the same thing here.
    torch.manual_seed(3)
    batch, k, n_crops = 4, 4096, 4
    t, s = torch.randn(2 * batch, k) * 3, torch.randn(n_crops * batch, k) * 3
    reference = DINOLoss(k)(s.double(), t.double(), teacher_temp=0.04, n_student_crops=n_crops).item()
    loss_fn = DINOLoss(k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(s, t, teacher_temp=0.04, n_student_crops=n_crops)
    assert got.dtype == torch.float32 and loss_fn.center.dtype == torch.float32
    assert got.item() == pytest.approx(reference, abs=1e-4)


def test_loss_pieces_compose_and_accept_external_targets():
    torch.manual_seed(1)
    k, batch = 5, 4
    loss_fn = DINOLoss(k)
    loss_fn.center.copy_(torch.randn(1, k))
    t, s = torch.randn(2 * batch, k), torch.randn(3 * batch, k)
    targets = loss_fn.teacher_targets(t, 0.04, 2)
    assert len(targets) == 2 and torch.allclose(targets[0].sum(-1), torch.ones(batch))
    # sharpening: a lower temperature gives a peakier distribution
    assert loss_fn.teacher_targets(t, 0.01, 2)[0].max(-1).values.mean() > targets[0].max(-1).values.mean()
    # an external target, Gen-SIS's: the teacher LOGITS of two images mixed before the centring and softmax
    # (mixing their probabilities would be another, wrong, target), with every student crop counted
    t1, t2 = t.chunk(2)
    mixed = loss_fn.teacher_targets(0.3 * t1 + 0.7 * t2, 0.04, 1)
    value = loss_fn.cross_entropy(mixed, s, 3, skip_same=False)
    log_p = torch.log_softmax(s / 0.1, -1).chunk(3)
    want = sum((-(mixed[0] * lp).sum(-1)).mean() for lp in log_p) / 3
    torch.testing.assert_close(value, want)
    assert not torch.allclose(mixed[0], 0.3 * targets[0] + 0.7 * targets[1], atol=1e-3)
    for j in range(3):  # each crop's term is disentanglement_loss with that mix
        dis = disentanglement_loss(s.chunk(3)[j], t1, t2, torch.full((batch,), 0.3), loss_fn.center[0], 0.1, 0.04)
        torch.testing.assert_close(dis, (-(mixed[0] * log_p[j]).sum(-1)).mean())


def test_disentanglement_loss_matches_a_hand_computation_and_alpha_weighs_the_first_teacher_output():
    rng = np.random.default_rng(0)
    b, k, s_temp, t_temp = 3, 6, 0.1, 0.05
    s, t1, t2 = (rng.normal(size=(b, k)) for _ in range(3))
    alpha, center = np.array([0.2, 0.5, 0.9]), rng.normal(size=k) * 0.3
    want = 0.0
    for i in range(b):
        target = _softmax((alpha[i] * t1[i] + (1 - alpha[i]) * t2[i] - center) / t_temp)  # logits mixed, then softmax
        log_p = np.log(_softmax(s[i] / s_temp))
        want += -sum(target[j] * log_p[j] for j in range(k)) / b
    as_t = [torch.tensor(a, dtype=torch.float32) for a in (s, t1, t2, alpha, center)]
    got = disentanglement_loss(*as_t, student_temp=s_temp, teacher_temp=t_temp)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-5)
    swapped = disentanglement_loss(as_t[0], as_t[2], as_t[1], 1 - as_t[3], as_t[4], s_temp, t_temp)
    assert swapped.item() == pytest.approx(want, rel=1e-5)  # alpha is the weight on teacher_logits_1
    # alpha = 1: the target is DINO's target for x1 (centred, sharpened), whatever t2 is
    dino = DINOLoss(k, student_temp=s_temp)
    dino.center.copy_(as_t[4][None])
    target_x1 = dino.teacher_targets(as_t[1], t_temp, 1)
    ones = torch.ones(b)
    got = disentanglement_loss(as_t[0], as_t[1], as_t[2] * 100, ones, as_t[4], s_temp, t_temp)
    torch.testing.assert_close(got, dino.cross_entropy(target_x1, as_t[0], 1, skip_same=False))
    # gradients reach the student only, and in fp32 inside a bf16 autocast region
    student = as_t[0].clone().requires_grad_()
    teacher = as_t[1].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = disentanglement_loss(student, teacher, as_t[2], as_t[3], as_t[4], s_temp, t_temp)
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad is not None and teacher.grad is None


def test_cosine_schedule_warmup_and_endpoints():
    sched = cosine_schedule(1.0, 0.1, epochs=10, iters_per_epoch=5, warmup_epochs=2, warmup_start=0.0)
    assert sched.shape == (50,)
    assert sched[0] == 0.0 and sched[10] == pytest.approx(1.0)  # warmup ends at the base value
    np.testing.assert_allclose(np.diff(sched[:11]), 0.1)  # linear warmup
    assert np.all(np.diff(sched[10:]) <= 0) and sched[-1] == pytest.approx(0.1)
    momentum = cosine_schedule(0.996, 1.0, epochs=3, iters_per_epoch=4)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] == pytest.approx(1.0)
    assert np.all(np.diff(momentum) >= 0)


def test_teacher_temperature_warmup():
    temp = linear_warmup(0.04, 0.07, epochs=5, iters_per_epoch=2, warmup_epochs=3)
    assert temp.shape == (10,)
    assert temp[0] == pytest.approx(0.04) and temp[5] == pytest.approx(0.07) and np.all(temp[5:] == 0.07)
    assert np.all(linear_warmup(0.04, 0.07, 2, 3, 0) == 0.07)


def test_head_shapes_and_fixed_unit_norm_last_layer():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=True)
    assert head(torch.randn(5, 16)).shape == (5, 32)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))
    free = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_multicrop_model_groups_by_size_and_keeps_crop_order():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 6))
    model = MultiCropModel(backbone, DINOHead(6, 10, 12, 4)).eval()
    crops = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    out = model(crops)
    assert out.shape == (8, 10)
    torch.testing.assert_close(out[4:6], model.head(backbone(crops[2])))


def test_weight_decay_only_on_weight_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    groups = param_groups(model)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=0.1)
    opt.param_groups[0]["weight_decay"] = 0.5
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay can move anything
    opt.step()
    after = list(model.parameters())
    torch.testing.assert_close(after[0], before[0] * (1 - 0.1 * 0.5))  # weight decayed
    for i in (1, 2, 3, 5):  # biases and LayerNorm weight/bias untouched
        torch.testing.assert_close(after[i], before[i])


def test_clip_gradients_is_per_parameter():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_gradients(nn.ParameterList([a, b]), 3.0)
    assert a.grad.norm().item() == pytest.approx(3.0, rel=1e-4)  # 50 -> 3
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))  # already below 3: unchanged


def test_collapse_monitor_warns_on_uniform_and_one_hot_not_on_healthy():
    k = 64
    uniform = torch.full((8, k), 1 / k)
    one_hot = torch.zeros(8, k)
    one_hot[:, 3] = 1.0
    healthy = torch.eye(k)[:8] * 0.9 + 0.1 / k
    stats = teacher_stats(uniform)
    assert stats["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-4)
    assert teacher_stats(one_hot)["teacher_marginal_entropy"] < 1e-3
    for targets, should_warn in ((uniform, True), (one_hot, True), (healthy, False)):
        monitor = CollapseMonitor(k, patience=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(4):
                monitor.update(step, 1.0, teacher_stats(targets))
        assert any("COLLAPSE" in str(w.message) for w in caught) == should_warn
    monitor = CollapseMonitor(k, patience=2)
    with pytest.warns(UserWarning, match="ln\\(out_dim\\)"):
        for step in range(2):
            monitor.update(step, math.log(k), teacher_stats(healthy))


def test_koleo_loss_matches_a_hand_computation_and_pushes_nearest_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 2.0], [-3.0, 0.0]], requires_grad=True)
    u = x.detach() / x.detach().norm(dim=1, keepdim=True)
    nearest_distances = []
    for i in range(4):  # the nearest other row on the unit circle, by Euclidean distance
        nearest_distances.append(min(float((u[i] - u[j]).norm()) for j in range(4) if j != i))
    want = -np.mean(np.log(np.array(nearest_distances) + 1e-8))
    got = koleo_loss(x)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()  # a step down the gradient spreads the batch: its nearest-neighbour distances grow
    spread = koleo_loss((x - 0.05 * x.grad).detach())
    assert spread < got
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [0.99, 0.02]])
    assert koleo_loss(clustered) > got  # features sharing one direction cost more


def test_the_multicrop_model_returns_the_backbone_features_it_fed_the_head():
    torch.manual_seed(0)
    backbone, head = nn.Linear(3 * 4 * 4, 8), DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    model = MultiCropModel(nn.Sequential(nn.Flatten(), backbone), head)
    crops = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    logits, features = model(crops, return_features=True)
    torch.testing.assert_close(features, backbone(torch.cat(crops).flatten(1)))
    torch.testing.assert_close(logits, head(features))
    torch.testing.assert_close(model(crops), logits)
