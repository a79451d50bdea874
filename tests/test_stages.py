"""Which parameters each experiment trains, per stage, against lists written here from
docs/design.md §1-§2 (not read from models/stages.py), through the scripts' own pieces:
Experiment.build_model, prepare_model, make_optimizer and one real train_step.

RGB stage 1: the ConvLSTM and the classifier. RGB stage 2: also layer4[0..2].conv1 / conv2 and
the ResNet fc (the CAM weights), and the MS / OP heads; never layer4.0.downsample, never a
BatchNorm. Flow: every parameter. Two-stream: the new classifier, the RGB ConvLSTM, RGB
layer4[0..2].conv1 / conv2 and RGB fc at the base lr, the whole flow layer4 at 1e-4."""
import pytest
import torch
import torch.nn as nn

from models import EgoRNN, FlowResNet34, TwoStream
from utils import experiment as E
from utils.train import train_step

pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]
C, T, FRAME, MEM = 3, 4, 64, 8

CONVLSTM = [f"convlstm.conv_x{g}.{w}" for g in "ifco" for w in ("weight", "bias")] + \
           [f"convlstm.conv_h{g}.weight" for g in "ifco"]
CLASSIFIER = ["classifier.1.weight", "classifier.1.bias"]
LAYER4_CONVS = [f"backbone.layer4.{b}.conv{k}.weight" for b in (0, 1, 2) for k in (1, 2)]
CAM_FC = ["backbone.fc.weight", "backbone.fc.bias"]
NO_GRADIENT = {"backbone.fc.bias"}  # trainable, but the CAM reads only rows of fc.weight


def experiment(kind, stage, tmp_path, extra=()):
    args = E.base_parser(kind, "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--frameSize", str(FRAME),
         "--seqLen", str(T), "--memSize", str(MEM), "--pretrained", "none", *extra])
    return E.Experiment(kind, args, stage, torch.device("cpu"), "fp32", C, [f"c{i}" for i in range(C)])


def rgb_expected(model, stage, prefix="egornn."):
    names = CONVLSTM + CLASSIFIER + (LAYER4_CONVS + CAM_FC if stage == 2 else [])
    expected = {prefix + n for n in names}
    if stage == 2:
        expected |= {n for n, _ in model.named_parameters() if n.startswith(("ms_head.", "op_head."))}
    return expected


def batch_for(exp):
    torch.manual_seed(1)
    b = {"label": torch.tensor([0, 2]), "index": torch.tensor([0, 1])}
    if exp.family in ("rgb", "twostream"):
        b["rgb"] = torch.randn(2, T, 3, FRAME, FRAME)
    if exp.family in ("flow", "twostream"):
        b["flow"] = torch.randn(2, 1, 10, FRAME, FRAME)
    if exp.ms and exp.heads_on:
        b["mmaps"] = (torch.rand(2, T, 2, 2) > 0.5).float()
    return b


def one_step(exp, model):
    """Parameters in the optimiser, parameters requiring grad, parameters and buffers changed by
    one train_step of the scripts."""
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = exp.make_optimizer(model)
    in_optimizer = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert len(in_optimizer) == len(set(in_optimizer)), "a parameter in two groups"
    requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    exp.set_train_mode(model)
    train_step(exp, model, batch_for(exp), optimizer, torch.Generator().manual_seed(0))
    after = model.state_dict()
    params = dict(model.named_parameters())
    changed = {n for n in params if not torch.equal(before[n], after[n])}
    buffers = {n for n in before if n not in params and not torch.equal(before[n], after[n])}
    return optimizer, set(in_optimizer), requires_grad, changed, buffers


def bn_names(model):
    return {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d)
            for p, _ in mod.named_parameters()}


@pytest.mark.parametrize("kind,stage,extra", [("rgb", 1, []), ("rgb", 2, []), ("ms_op", 2, []),
                                              ("ms", 2, ["--regression"]), ("rgb", 2, ["--noAttention"])])
def test_rgb_stage_parameters(tmp_path, kind, stage, extra):
    exp = experiment(kind, stage, tmp_path, extra)
    model = E.prepare_model(exp, exp.build_model("none"))
    expected = rgb_expected(model, stage)
    if kind == "ms_op":
        assert any(n.startswith("op_head.") for n in expected) and any(n.startswith("ms_head.") for n in expected)
    _, in_optimizer, requires_grad, changed, buffers = one_step(exp, model)
    assert in_optimizer == expected, (in_optimizer ^ expected)
    assert requires_grad == expected, (requires_grad ^ expected)
    unused = {"egornn." + n for n in NO_GRADIENT}
    if "--noAttention" in extra:
        unused |= {"egornn." + n for n in CAM_FC}  # no CAM: fc is trainable but unused
    assert changed == expected - unused, (changed ^ (expected - unused))
    assert not any("downsample" in n for n in changed)
    assert not (bn_names(model) & expected)
    assert buffers == set(), buffers  # every BatchNorm keeps its statistics
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_flow_trains_every_parameter(tmp_path):
    exp = experiment("flow", 1, tmp_path)
    model = E.prepare_model(exp, exp.build_model("none"))
    everything = {n for n, _ in model.named_parameters()}
    _, in_optimizer, requires_grad, changed, buffers = one_step(exp, model)
    assert in_optimizer == requires_grad == changed == everything
    assert "bn1.running_mean" in buffers and "layer4.2.bn2.running_var" in buffers  # BatchNorms in train mode


def test_twostream_parameters_and_learning_rates(tmp_path):
    exp = experiment("twostream", 1, tmp_path)
    flow = FlowResNet34(C, pretrained="none")
    rgb = EgoRNN(C, mem_size=MEM, pretrained="none")
    model = E.prepare_model(exp, TwoStream(C, flow, rgb))
    main = {"classifier.1.weight", "classifier.1.bias"} | \
        {"rgb_model." + n for n in CONVLSTM + LAYER4_CONVS + CAM_FC}
    flow_layer4 = {"flow_model." + n for n, _ in flow.layer4.named_parameters(prefix="layer4")}
    assert "flow_model.layer4.0.downsample.0.weight" in flow_layer4 and "flow_model.layer4.1.bn1.weight" in flow_layer4
    optimizer, in_optimizer, requires_grad, changed, buffers = one_step(exp, model)
    assert in_optimizer == requires_grad == main | flow_layer4, (in_optimizer ^ (main | flow_layer4))
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for g in optimizer.param_groups:
        by_lr.setdefault(g["lr"], set()).update(names[id(p)] for p in g["params"])
    assert by_lr == {1e-2: main, 1e-4: flow_layer4}
    assert changed == (main | flow_layer4) - {"rgb_model.backbone.fc.bias"}, changed ^ (main | flow_layer4)
    # the flow layer4 runs in train mode (as the original), every other BatchNorm keeps its statistics
    assert buffers and all(n.startswith("flow_model.layer4.") for n in buffers), buffers
    assert not model.rgb_model.classifier.training and not model.flow_model.classifier.training
