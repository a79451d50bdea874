"""Tests of models/: shapes, the ConvLSTM equations, attention, training stages, the OP sampler,
checkpoint formats and pretrained-weight handling. Random tensors on CPU, small frames."""
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from tests.conftest import one_thread_and_flushed_subnormals

import models
from models import (CheckpointError, ConvLSTMCell, EgoRNN, FlowResNet34, MotionSegmentationHead,
                    OrderPredictionHead, PretrainedWeightsError, ResNet34Backbone, SAMSOPNet, TwoStream,
                    checkpoint_info, checkpoint_num_classes, feature_map_size, load_checkpoint,
                    param_groups, set_stage, set_train_mode)
from models.stages import trainable_names

pytestmark = pytest.mark.filterwarnings("ignore:pretrained='none'")
C = 5      # classes
MEM = 8    # small ConvLSTM memory keeps the tests fast


@pytest.fixture(autouse=True, scope="module")
def flush_denormal():
    with one_thread_and_flushed_subnormals():
        yield


def rgb_model(**kw):
    kw.setdefault("pretrained", "none")
    return SAMSOPNet(C, mem_size=MEM, **kw)


@pytest.fixture(scope="module")
def tv_state(tmp_path_factory):
    """A random torchvision resnet34 state dict saved to a file (stands in for ImageNet)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet34.pth"
    torch.save(state, path)
    return state, path


# ----------------------------------------------------------------------------- backbone

def test_feature_map_size():
    assert feature_map_size(224) == 7 and feature_map_size(112) == 4 and feature_map_size(64) == 2


def test_backbone_matches_torchvision(tv_state):
    state, path = tv_state
    net = torchvision.models.resnet34(weights=None)
    net.load_state_dict(state)
    net.eval()
    bb = ResNet34Backbone(pretrained=str(path)).eval()
    seen = {}
    net.layer4[1].register_forward_hook(lambda m, i, o: seen.__setitem__("residual", o))
    net.layer4[2].conv2.register_forward_hook(lambda m, i, o: seen.__setitem__("conv2", o))
    net.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_logits = net(x)
        logits, f_bn, f_nobn = bb(x)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(f_bn, seen["layer4"])
    torch.testing.assert_close(f_nobn, seen["conv2"] + seen["residual"])  # no bn2, no ReLU
    assert (f_nobn < 0).any()


# ----------------------------------------------------------------------------- ConvLSTM

def _np_conv3x3(x, w, b=0.0):
    """Cross-correlation of a 2-D map with a 3x3 kernel, zero padding 1 (plain python)."""
    H, W = x.shape
    xp = np.pad(x, 1)
    out = np.zeros((H, W))
    for r in range(H):
        for c in range(W):
            out[r, c] = sum(xp[r + i, c + j] * w[i, j] for i in range(3) for j in range(3)) + b
    return out


def test_convlstm_cell_hand_computation():
    cell = ConvLSTMCell(1, 1, kernel_size=3)
    rng = np.random.default_rng(0)
    wx = {g: rng.uniform(-0.5, 0.5, (3, 3)) for g in "ifco"}
    wh = {g: rng.uniform(-0.5, 0.5, (3, 3)) for g in "ifco"}
    bx = {"i": 0.1, "f": -0.2, "c": 0.3, "o": 0.05}
    with torch.no_grad():
        for g in "ifco":
            getattr(cell, f"conv_x{g}").weight.copy_(torch.tensor(wx[g]).view(1, 1, 3, 3))
            getattr(cell, f"conv_x{g}").bias.fill_(bx[g])
            getattr(cell, f"conv_h{g}").weight.copy_(torch.tensor(wh[g]).view(1, 1, 3, 3))
    xs = [rng.uniform(-1, 1, (3, 3)) for _ in range(2)]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, c = np.zeros((3, 3)), np.zeros((3, 3))
    expected = []
    for x in xs:
        pre = {g: _np_conv3x3(x, wx[g], bx[g]) + _np_conv3x3(h, wh[g]) for g in "ifco"}
        i, f, g, o = sig(pre["i"]), sig(pre["f"]), np.tanh(pre["c"]), sig(pre["o"])
        c = g * i + c * f
        h = o * np.tanh(c)
        expected.append((h.copy(), c.copy()))
    state = None
    with torch.no_grad():
        for x, (eh, ec) in zip(xs, expected):
            state = cell(torch.tensor(x, dtype=torch.float32).view(1, 1, 3, 3), state)
            np.testing.assert_allclose(state[0].view(3, 3).numpy(), eh, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state[1].view(3, 3).numpy(), ec, rtol=1e-5, atol=1e-6)
        seq = cell.forward_sequence(torch.tensor(np.stack(xs), dtype=torch.float32).view(1, 2, 1, 3, 3))
    torch.testing.assert_close(seq[1], state[1])
    torch.testing.assert_close(seq[0], state[0])


def test_convlstm_init_and_biases():
    torch.manual_seed(0)
    cell = ConvLSTMCell(64, 32)
    for g in "ifco":
        cx, ch = getattr(cell, f"conv_x{g}"), getattr(cell, f"conv_h{g}")
        assert ch.bias is None and torch.all(cx.bias == 0)
        for conv, fan_in in ((cx, 64 * 9), (ch, 32 * 9)):
            std = math.sqrt(2.0 / (fan_in + 32 * 9))  # Xavier normal
            assert abs(conv.weight.std().item() / std - 1) < 0.05
    assert cell.conv_xi.padding == (1, 1) and cell.conv_xi.stride == (1, 1)
    xs = torch.randn(2, 3, 64, 5, 5)
    s1 = cell.forward_sequence(xs)
    s2 = None
    for t in range(3):
        s2 = cell(xs[:, t], s2)
    torch.testing.assert_close(s1[1], s2[1])


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("T,size,B", [(1, 112, 2), (7, 112, 2), (16, 112, 1), (1, 224, 1), (7, 224, 1)])
def test_egornn_shapes(T, size, B):
    s = feature_map_size(size)
    m = rgb_model(ms="classification", op=T >= 4, ms_size=s).eval()
    with torch.no_grad():
        out = m(torch.randn(B, T, 3, size, size), generator=torch.Generator().manual_seed(0))
    assert out["logits"].shape == (B, C)
    assert out["attention"].shape == (B, T, s, s)
    assert out["cam_class"].shape == (B, T) and out["cam_class"].dtype == torch.long
    assert out["features"].shape == out["layer4"].shape == (B, T, 512, s, s)
    assert out["ms_out"].shape == (B, T, 2, s, s)
    if T >= 4:
        assert out["op_logits"].shape == (B, 12) and out["op_target"].shape == (B,)
    else:
        assert "op_logits" not in out


def test_heads_off_and_regression_shapes():
    m = rgb_model(ms="regression", ms_size=2, op=True).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 4, 3, 64, 64))
        assert out["ms_out"].shape == (2, 4, 2, 2)
        assert 0 <= out["ms_out"].min() and out["ms_out"].max() <= 1
        out = m(torch.randn(2, 4, 3, 64, 64), heads=False)
    assert "ms_out" not in out and "op_logits" not in out


def test_flow_and_twostream_shapes():
    flow = FlowResNet34(C, pretrained="none").eval()
    with torch.no_grad():
        out = flow(torch.randn(2, 10, 112, 112))
        assert out["logits"].shape == (2, C) and out["features"].shape == (2, 512)
        x = torch.randn(2, 3, 10, 64, 64)
        out = flow(x)
        assert out["logits"].shape == (2, C)
        torch.testing.assert_close(out["logits"], torch.stack([flow(x[:, k])["logits"] for k in range(3)]).mean(0))
        two = TwoStream(C, flow, EgoRNN(C, mem_size=MEM, pretrained="none")).eval()
        out = two(torch.randn(2, 10, 64, 64), torch.randn(2, 3, 3, 64, 64))
    assert out["logits"].shape == (2, C)
    assert two.classifier[1].in_features == 512 + MEM and two.classifier[0].p == 0.5


# ----------------------------------------------------------------------------- attention

def _record_cell_input(model, monkeypatch):
    seen = []
    original = model.convlstm.input_gates

    def spy(x):
        seen.append(x.detach().clone())
        return original(x)
    monkeypatch.setattr(model.convlstm, "input_gates", spy)
    return seen


def test_attention_is_cam_softmax(monkeypatch):
    m = EgoRNN(C, mem_size=MEM, pretrained="none").eval()
    seen = _record_cell_input(m, monkeypatch)
    x = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        logits, f_bn, f_nobn = m.backbone(x.flatten(0, 1))
    att = out["attention"]
    torch.testing.assert_close(att.sum(dim=(-2, -1)), torch.ones(2, 3))
    cls = logits.argmax(1)
    cam = (m.backbone.fc.weight[cls][:, :, None, None] * f_bn).sum(1)
    ref = F.softmax(cam.flatten(1), 1).view(6, *cam.shape[1:])
    torch.testing.assert_close(att.flatten(0, 1), ref)
    assert torch.equal(out["cam_class"].flatten(), cls)
    torch.testing.assert_close(seen[0], f_nobn * ref.unsqueeze(1), rtol=1e-4, atol=1e-4)


def test_no_attention_feeds_layer4_unchanged(monkeypatch):
    m = EgoRNN(C, mem_size=MEM, attention=False, pretrained="none").eval()
    seen = _record_cell_input(m, monkeypatch)
    x = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = m(x)
        _, f_bn, _ = m.backbone(x.flatten(0, 1))
    assert out["attention"] is None and out["cam_class"] is None
    assert torch.equal(seen[0], f_bn)
    assert torch.equal(out["features"], out["layer4"])


# ----------------------------------------------------------------------------- stages

def _snapshot(model):
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: b.detach().clone() for n, b in model.named_buffers()})


def _changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def _rgb_step(m, stage):
    set_train_mode(m, stage)
    opt = torch.optim.Adam(param_groups(m, stage, 1e-2))
    out = m(torch.randn(2, 4, 3, 64, 64), generator=torch.Generator().manual_seed(0), heads=stage == 2)
    loss = F.cross_entropy(out["logits"], torch.tensor([0, 1]))
    if stage == 2:
        loss = loss + m.ms_head.loss(out["ms_out"], (torch.rand(2, 4, 2, 2) > 0.5).float())
        loss = loss + F.cross_entropy(out["op_logits"], out["op_target"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return out


@pytest.mark.parametrize("stage", [1, 2])
def test_rgb_stage_trains_exactly_the_intended_parameters(stage):
    torch.manual_seed(0)
    m = rgb_model(ms="classification", ms_size=2, op=True)
    params, buffers = _snapshot(m)
    _rgb_step(m, stage)
    intended = set(trainable_names(m, stage)["main"])
    expected = {"egornn.convlstm.", "egornn.classifier."}
    if stage == 2:
        expected |= {f"egornn.backbone.layer4.{b}.conv{k}." for b in range(3) for k in (1, 2)}
        expected |= {"egornn.backbone.fc.", "ms_head.", "op_head."}
    assert intended == {n for n in params if n.startswith(tuple(expected))}
    # fc.bias is trainable but gets no gradient: the CAM only reads rows of fc.weight.
    assert _changed(params, m) == intended - {"egornn.backbone.fc.bias"}
    for n, b in m.named_buffers():
        assert torch.equal(b, buffers[n]), n  # BatchNorm statistics untouched
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert not mod.training
    assert m.egornn.classifier.training and not m.egornn.backbone.layer3.training


def test_mixed_precision_keeps_attention_and_state_in_float32():
    m = rgb_model(ms="classification", ms_size=2, op=True)
    set_stage(m, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 4, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert out["attention"].dtype == out["cell_pooled"].dtype == torch.float32
    loss = F.cross_entropy(out["logits"].float(), torch.tensor([0, 1])) + \
        m.ms_head.loss(out["ms_out"].float(), torch.ones(2, 4, 2, 2)) + \
        F.cross_entropy(out["op_logits"].float(), out["op_target"])
    loss.backward()
    assert m.egornn.backbone.layer4[0].conv1.weight.grad is not None


def test_frozen_layers_build_no_graph():
    m = rgb_model()
    seen = {}
    m.egornn.backbone.layer3.register_forward_hook(lambda mod, i, o: seen.__setitem__("layer3", o))
    m.egornn.backbone.register_forward_hook(lambda mod, i, o: seen.__setitem__("out", o))
    x = torch.randn(1, 2, 3, 64, 64)
    set_stage(m, 1)
    out = m(x)
    assert not any(t.requires_grad for t in seen["out"]) and not seen["layer3"].requires_grad
    assert out["logits"].requires_grad
    set_stage(m, 2)
    m(x)
    assert not seen["layer3"].requires_grad
    assert all(t.requires_grad for t in seen["out"])


def test_flow_single_stage_trains_everything_with_bn_in_train_mode():
    torch.manual_seed(0)
    flow = FlowResNet34(C, pretrained="none")
    params, buffers = _snapshot(flow)
    set_train_mode(flow, 1)
    opt = torch.optim.SGD(param_groups(flow, 1, 1e-2), lr=1e-2, momentum=0.9)
    loss = F.cross_entropy(flow(torch.randn(2, 10, 64, 64))["logits"], torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert _changed(params, flow) == set(params)
    assert all(m.training for m in flow.modules())
    assert not torch.equal(buffers["bn1.running_mean"], flow.bn1.running_mean)


def test_twostream_groups_and_step():
    torch.manual_seed(0)
    two = TwoStream(C, FlowResNet34(C, pretrained="none"), EgoRNN(C, mem_size=MEM, pretrained="none"))
    params, buffers = _snapshot(two)
    groups = param_groups(two, 1, 1e-2, flow_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("main", 1e-2), ("flow_layer4", 1e-4)]
    set_train_mode(two, 1)
    opt = torch.optim.SGD(groups, lr=1e-2, momentum=0.9)
    out = two(torch.randn(2, 10, 64, 64), torch.randn(2, 3, 3, 64, 64))
    F.cross_entropy(out["logits"], torch.tensor([0, 1])).backward()
    opt.step()
    names = trainable_names(two, 1)
    main = {n for n in params if n.startswith(("classifier.", "rgb_model.convlstm.", "rgb_model.backbone.fc."))
            or any(n.startswith(f"rgb_model.backbone.layer4.{b}.conv{k}.") for b in range(3) for k in (1, 2))}
    assert set(names["main"]) == main
    assert set(names["flow_layer4"]) == {n for n in params if n.startswith("flow_model.layer4.")}
    assert _changed(params, two) == (main | set(names["flow_layer4"])) - {"rgb_model.backbone.fc.bias"}
    changed_buffers = {n for n, b in two.named_buffers() if not torch.equal(b, buffers[n])}
    # As in the original, the flow layer4 runs in train mode (its BN statistics update); every
    # other BatchNorm keeps its statistics.
    assert changed_buffers and all(n.startswith("flow_model.layer4.") for n in changed_buffers)
    assert not two.rgb_model.classifier.training and not two.flow_model.classifier.training


# ----------------------------------------------------------------------------- heads

def test_permutation_table():
    perms = OrderPredictionHead.PERMUTATIONS
    table = OrderPredictionHead.permutation_table()
    assert len(perms) == 12 and table.shape == (12, 2, 4)
    orders = {tuple(o) for o in table.view(-1, 4).tolist()}
    assert len(orders) == 24  # every order of 4 frames exactly once
    for k, p in enumerate(perms):
        assert tuple(table[k, 1].tolist()) == tuple(reversed(p))


def test_op_sampler_reproducible_and_valid():
    a = OrderPredictionHead.sample(64, 16, torch.Generator().manual_seed(3))
    b = OrderPredictionHead.sample(64, 16, torch.Generator().manual_seed(3))
    c = OrderPredictionHead.sample(64, 16, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    frame_idx, order, target = a
    assert (frame_idx[:, 1:] > frame_idx[:, :-1]).all() and frame_idx.min() >= 0 and frame_idx.max() < 16
    table = OrderPredictionHead.permutation_table()
    fwd = (order == table[target, 0]).all(1)
    bwd = (order == table[target, 1]).all(1)
    assert (fwd | bwd).all() and fwd.any() and bwd.any()
    with pytest.raises(ValueError):
        OrderPredictionHead.sample(1, 3)


@pytest.mark.parametrize("op_input", ["flat", "pooled"])
def test_op_head_reuses_backbone_pass_and_reads_layer4(op_input):
    m = rgb_model(ms="classification", ms_size=2, op=True, op_input=op_input).eval()
    calls = []
    m.egornn.backbone.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        out = m(x, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1
    frames = out["op_frames"]
    maps = out["layer4"][torch.arange(2)[:, None], frames]  # (2, 4, 512, 2, 2)
    feats = maps.flatten(2) if op_input == "flat" else maps.mean(dim=(-2, -1))
    with torch.no_grad():
        torch.testing.assert_close(out["op_logits"], m.op_head(feats))
        torch.testing.assert_close(out["ms_out"].flatten(0, 1), m.ms_head(out["features"].flatten(0, 1)))


def test_ms_input_layer4():
    m = rgb_model(ms="classification", ms_size=2, ms_input="layer4").eval()
    with torch.no_grad():
        out = m(torch.randn(1, 2, 3, 64, 64))
        torch.testing.assert_close(out["ms_out"].flatten(0, 1), m.ms_head(out["layer4"].flatten(0, 1)))


def test_ms_head_losses():
    head = MotionSegmentationHead(512, size=2)
    f = torch.randn(3, 512, 2, 2)
    out = head(f)
    target = (torch.rand(3, 2, 2) > 0.5).float()
    ref = -torch.log_softmax(out, 1).gather(1, target.long().unsqueeze(1)).mean()
    torch.testing.assert_close(head.loss(out, target), ref)
    reg = MotionSegmentationHead(512, size=2, regression=True)
    out = reg(f)
    torch.testing.assert_close(reg.loss(out, target), ((out - target) ** 2).mean())
    with pytest.raises(ValueError, match="size"):
        head(torch.randn(1, 512, 7, 7))


# ----------------------------------------------------------------------------- checkpoints

def _original_rgb_state(egornn, prefix=""):
    """An EgoRNN state dict renamed to the original Ego-RNN key format (docs/design.md §7)."""
    out = {}
    for k, v in egornn.state_dict().items():
        if k.startswith("backbone."):
            out[prefix + "resNet." + k[len("backbone."):]] = v
        elif k.startswith("convlstm.conv_"):
            name, what = k[len("convlstm.conv_"):].split(".")
            out[f"{prefix}lstm_cell.conv_{name[1]}_{name[0]}{name[0]}.{what}"] = v
        elif k.startswith("classifier.1."):
            out[prefix + k] = v
            out[prefix + "fc." + k[len("classifier.1."):]] = v
        else:
            raise AssertionError(k)
    out[prefix + "weight_softmax"] = egornn.backbone.fc.weight.detach()
    return out


def _original_flow_state(flow, prefix=""):
    return {prefix + (k.replace("classifier.1.", "fc_action.")): v for k, v in flow.state_dict().items()}


def _drop_nbt(state):
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _randomise_bn(model):
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)


def test_original_rgb_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    src = EgoRNN(C, mem_size=MEM, pretrained="none").eval()
    _randomise_bn(src)
    x = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        ref = src(x)["logits"]
    state = _original_rgb_state(src)
    assert "lstm_cell.conv_i_xx.bias" in state and "lstm_cell.conv_o_hh.weight" in state
    torch.save(_drop_nbt(state), tmp_path / "model_rgb_state_dict.pth")
    for dst in (EgoRNN(C, mem_size=MEM, pretrained="none"), rgb_model(ms="classification", ms_size=2, op=True)):
        info = load_checkpoint(dst, tmp_path / "model_rgb_state_dict.pth")
        assert info["format"] == "ego-rnn"
        dst.eval()
        with torch.no_grad():
            out = dst(x, heads=False) if isinstance(dst, SAMSOPNet) else dst(x)
        torch.testing.assert_close(out["logits"], ref)
    assert info["missing_heads"] and all(k.startswith(("ms_head.", "op_head.")) for k in info["missing_heads"])
    assert checkpoint_num_classes(tmp_path / "model_rgb_state_dict.pth") == C
    # nn.DataParallel files carry a "module." prefix.
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pth")
    dst = EgoRNN(C, mem_size=MEM, pretrained="none")
    load_checkpoint(dst, tmp_path / "dp.pth")
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x)["logits"], ref)


def test_original_flow_and_twostream_checkpoints(tmp_path):
    torch.manual_seed(2)
    flow = FlowResNet34(C, pretrained="none").eval()
    _randomise_bn(flow)
    fx = torch.randn(1, 10, 64, 64)
    with torch.no_grad():
        ref = flow(fx)["logits"]
    torch.save(_drop_nbt(_original_flow_state(flow)), tmp_path / "flow.pth")
    fresh = FlowResNet34(C, pretrained="none")
    assert load_checkpoint(fresh, tmp_path / "flow.pth")["format"] == "ego-rnn"
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(fx)["logits"], ref)
    assert checkpoint_num_classes(tmp_path / "flow.pth") == C

    two = TwoStream(C, flow, EgoRNN(C, mem_size=MEM, pretrained="none")).eval()
    rx = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        ref = two(fx, rx)["logits"]
    state = {**_original_flow_state(two.flow_model, "flowModel."),
             **_original_rgb_state(two.rgb_model, "frameModel."),
             "fc2.weight": two.classifier[1].weight, "fc2.bias": two.classifier[1].bias,
             "classifier.1.weight": two.classifier[1].weight, "classifier.1.bias": two.classifier[1].bias}
    torch.save(state, tmp_path / "two.pth")
    fresh = TwoStream(C, FlowResNet34(C, pretrained="none"), EgoRNN(C, mem_size=MEM, pretrained="none"))
    load_checkpoint(fresh, tmp_path / "two.pth")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(fx, rx)["logits"], ref)
    assert checkpoint_info(tmp_path / "two.pth")["family"] == "twostream"
    torch.save({"model": fresh.state_dict(), "num_classes": C}, tmp_path / "two_project.pth")
    again = TwoStream(C, FlowResNet34(C, pretrained="none"), EgoRNN(C, mem_size=MEM, pretrained="none"))
    assert load_checkpoint(again, tmp_path / "two_project.pth")["format"] == "project"
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(fx, rx)["logits"], ref)
    with pytest.raises(CheckpointError, match="two-stream"):
        load_checkpoint(EgoRNN(C, mem_size=MEM, pretrained="none"), tmp_path / "two.pth")


def test_project_checkpoints_and_errors(tmp_path):
    torch.manual_seed(3)
    src = rgb_model(ms="regression", ms_size=2, op=True).eval()
    x = torch.randn(1, 4, 3, 64, 64)
    g = torch.Generator()
    with torch.no_grad():
        ref = src(x, generator=g.manual_seed(0))
    torch.save({"model": src.state_dict(), "num_classes": C, "model_name": "samsopnet"}, tmp_path / "p.pth")
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    for name in ("p.pth", "bare.pth"):
        dst = rgb_model(ms="regression", ms_size=2, op=True)
        info = load_checkpoint(dst, tmp_path / name)
        assert info["format"] == "project" and not info["missing_heads"]
        with torch.no_grad():
            out = dst.eval()(x, generator=g.manual_seed(0))
        for k in ("logits", "ms_out", "op_logits"):
            torch.testing.assert_close(out[k], ref[k])
    assert load_checkpoint(rgb_model(), tmp_path / "p.pth")["meta"]["model_name"] == "samsopnet"
    assert load_checkpoint(EgoRNN(C, mem_size=MEM, pretrained="none"), tmp_path / "p.pth")["ignored"]
    info = checkpoint_info(tmp_path / "p.pth")
    assert (info["family"], info["num_classes"], info["mem_size"], info["ms"], info["ms_size"], info["op"]) == \
        ("rgb", C, MEM, "regression", 2, True)

    with pytest.raises(CheckpointError, match=f"{C} classes.*7"):
        load_checkpoint(SAMSOPNet(7, mem_size=MEM, pretrained="none"), tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match=f"{C} classes.*7"):
        load_checkpoint(SAMSOPNet(7, mem_size=MEM, pretrained="none"), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="RGB"):
        load_checkpoint(FlowResNet34(C, pretrained="none"), tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="memSize"):
        load_checkpoint(SAMSOPNet(C, mem_size=MEM * 2, pretrained="none"), tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="MS head"):
        load_checkpoint(rgb_model(ms="classification", ms_size=2), tmp_path / "p.pth")
    state = src.state_dict()
    del state["egornn.convlstm.conv_hf.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing.*conv_hf"):
        load_checkpoint(rgb_model(), tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(rgb_model(), tmp_path / "nope.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(CheckpointError, match="--pretrained"):
        load_checkpoint(FlowResNet34(C, pretrained="none"), tmp_path / "imagenet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        checkpoint_num_classes(tmp_path / "junk.pth")


# ----------------------------------------------------------------------------- pretrained

def test_pretrained_none_warns():
    with pytest.warns(UserWarning, match="CAM attention"):
        ResNet34Backbone(pretrained="none")


def test_pretrained_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet34.pth"
    with pytest.raises(PretrainedWeightsError, match=str(path)):
        EgoRNN(C, pretrained=str(path))
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(PretrainedWeightsError, match="bad.pth"):
        ResNet34Backbone(pretrained=str(tmp_path / "bad.pth"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="not a torchvision resnet34"):
        ResNet34Backbone(pretrained=str(tmp_path / "other.pth"))


def test_pretrained_path_and_cache(tv_state, tmp_path, monkeypatch):
    state, path = tv_state
    bb = ResNet34Backbone(pretrained=str(path))
    assert torch.equal(bb.layer4[2].conv2.weight, state["layer4.2.conv2.weight"])
    flow = FlowResNet34(C, pretrained=str(path))
    expected = state["conv1.weight"].mean(1, keepdim=True).repeat(1, 10, 1, 1)
    torch.testing.assert_close(flow.conv1.weight, expected)  # cross-modality init
    assert torch.equal(flow.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    # "imagenet" reads torchvision's cache file when it is there.
    old = torch.hub.get_dir()
    try:
        torch.hub.set_dir(str(tmp_path))
        (tmp_path / "checkpoints").mkdir()
        torch.save(state, models.imagenet_cache_path())
        assert models.imagenet_cache_path().startswith(str(tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "untrained" warning
            bb = ResNet34Backbone(pretrained="imagenet")
        assert torch.equal(bb.fc.weight, state["fc.weight"])
    finally:
        torch.hub.set_dir(old)


def test_pretrained_imagenet_not_cached_fails_fast(tmp_path, monkeypatch):
    """Without the cached file and without a network: one download attempt of the ResNet-34
    weights (no retries), then a one-line error saying where to put the file."""
    import socket
    old = torch.hub.get_dir()
    attempts = []

    def offline(url, *a, **k):  # what torch.hub raises without a network, whatever this machine has
        attempts.append((url, socket.getdefaulttimeout()))
        raise OSError("<urlopen error [Errno -2] Name or service not known>")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    try:
        torch.hub.set_dir(str(tmp_path))
        timeout_before = socket.getdefaulttimeout()
        with pytest.raises(PretrainedWeightsError) as err:
            SAMSOPNet(C, mem_size=MEM)
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path) in msg and "--pretrained none" in msg
        assert "resnet34-b627a593.pth" in msg
        assert len(attempts) == 1 and attempts[0][0].endswith("/resnet34-b627a593.pth"), attempts
        # the attempt runs under a finite socket timeout (an unreachable host cannot hang the
        # script), and the process's default timeout is restored afterwards
        assert attempts[0][1] is not None and 0 < attempts[0][1] <= 60, attempts
        assert socket.getdefaulttimeout() == timeout_before
    finally:
        torch.hub.set_dir(old)


def test_cam_attention_gradient_is_the_same_in_every_run_on_two_threads():
    """Stage 2 trains the ImageNet fc that picks each frame's CAM row; many frames share a class,
    so its gradient sums rows into the same place. That sum must not depend on how two threads
    meet (indexing fc_weight[cam_class] did: its backward accumulates with atomics on the CPU and
    two identical stage-2 runs of main_ms_op.py parted in the 4th digit)."""
    from models.egornn import cam_attention
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        fc = torch.randn(1000, 512, generator=g, requires_grad=True)
        f_bn = torch.randn(256, 512, 4, 4, generator=g)
        logits = torch.zeros(256, 1000)
        logits[torch.arange(256), torch.arange(256) % 3] = 1.0  # 3 classes for 256 frames
        upstream = torch.randn(256, 4, 4, generator=g)
        grads = []
        for _ in range(8):
            fc.grad = None
            attention, cam_class = cam_attention(logits, f_bn, fc)
            (attention * upstream).sum().backward()
            grads.append(fc.grad.clone())
        assert cam_class.tolist() == [i % 3 for i in range(256)]
        for other in grads[1:]:
            assert torch.equal(grads[0], other), (grads[0] - other).abs().max().item()
        # and it is the gradient: rows of the 3 classes only, each the sum over its frames
        assert grads[0][3:].abs().sum() == 0 and grads[0][:3].abs().sum() > 0
    finally:
        torch.set_num_threads(previous)
