"""The optimiser, its settings and the learning-rate schedule of every experiment with its
default arguments, against the values of docs/design.md §1-§2 written here:

  RGB (rgb, ms, ms_op)  Adam, weight decay 4e-5, eps 1e-4
      stage 1           lr 1e-3, 300 epochs, x0.1 after epochs 25, 75, 150
      stage 2           lr 1e-4, 150 epochs, x0.1 after epochs 25, 75
  flow                  SGD, momentum 0.9, weight decay 5e-4, lr 1e-2, 750 epochs,
                        x0.5 after epochs 150, 300, 500
  two-stream            SGD, momentum 0.9, weight decay 5e-4, 250 epochs, lr 1e-2 and 1e-4 for
                        the flow layer4, x0.99 after every epoch (StepLR(1, 0.99))

The schedule is checked by running it as fit() does (the lr of epoch e is read before the epoch,
the scheduler steps after it) and comparing every epoch's lr with the formula."""
import pytest
import torch

from models import EgoRNN, FlowResNet34, TwoStream
from utils import experiment as E

pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]
C = 3

ADAM = dict(weight_decay=4e-5, eps=1e-4)
SGD = dict(momentum=0.9, weight_decay=5e-4, nesterov=False, dampening=0)
CASES = {  # (kind, stage): (optimiser, settings, epochs, {base lr: group}, milestones, gamma per decay)
    ("rgb", 1): (torch.optim.Adam, ADAM, 300, [1e-3], [25, 75, 150], 0.1),
    ("ms", 1): (torch.optim.Adam, ADAM, 300, [1e-3], [25, 75, 150], 0.1),
    ("rgb", 2): (torch.optim.Adam, ADAM, 150, [1e-4], [25, 75], 0.1),
    ("ms", 2): (torch.optim.Adam, ADAM, 150, [1e-4], [25, 75], 0.1),
    ("ms_op", 2): (torch.optim.Adam, ADAM, 150, [1e-4], [25, 75], 0.1),
    ("flow", 1): (torch.optim.SGD, SGD, 750, [1e-2], [150, 300, 500], 0.5),
    ("twostream", 1): (torch.optim.SGD, SGD, 250, [1e-2, 1e-4], list(range(1, 251)), 0.99),
}


def experiment_and_model(kind, stage, tmp_path):
    args = E.base_parser(kind, "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--frameSize", "64",
         "--seqLen", "4", "--memSize", "8", "--pretrained", "none"])
    exp = E.Experiment(kind, args, stage, torch.device("cpu"), "fp32", C, [f"c{i}" for i in range(C)])
    if kind == "twostream":
        model = TwoStream(C, FlowResNet34(C, pretrained="none"), EgoRNN(C, mem_size=8, pretrained="none"))
    else:
        model = exp.build_model("none")
    return exp, E.prepare_model(exp, model)


@pytest.mark.parametrize("kind,stage", list(CASES))
def test_optimiser_and_schedule_of_each_experiment(tmp_path, kind, stage):
    kind_cls, settings, epochs, base_lrs, milestones, gamma = CASES[(kind, stage)]
    exp, model = experiment_and_model(kind, stage, tmp_path)
    assert exp.args.numEpochs == epochs
    optimizer = exp.make_optimizer(model)
    assert type(optimizer) is kind_cls
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(base_lrs)
    for g in optimizer.param_groups:
        for k, v in settings.items():
            assert g[k] == pytest.approx(v), (k, g[k])
    if kind_cls is torch.optim.Adam:
        assert not optimizer.param_groups[0]["amsgrad"]
    scheduler = exp.make_scheduler(optimizer)
    for epoch in range(1, epochs + 1):
        decays = sum(m < epoch for m in milestones)  # milestones already passed
        expected = [lr * gamma ** decays for lr in base_lrs]
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected, rel=1e-6), epoch
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees a step
        scheduler.step()


def test_lr_arguments_override_the_defaults(tmp_path):
    args = E.base_parser("ms_op", "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--frameSize", "64", "--seqLen", "4",
         "--memSize", "8", "--pretrained", "none", "--lr", "0.5", "--stepSize", "2", "5", "--decayRate", "0.25"])
    exp = E.Experiment("ms_op", args, 2, torch.device("cpu"), "fp32", C, ["a", "b", "c"])
    model = E.prepare_model(exp, exp.build_model("none"))
    optimizer = exp.make_optimizer(model)
    scheduler = exp.make_scheduler(optimizer)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 0.5, 0.125, 0.125, 0.125, 0.03125, 0.03125])
