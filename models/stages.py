"""Which parameters train in each training stage, and which modules stay in eval mode.

RGB (EgoRNN, SAMSOPNet), docs/design.md §1, as in Ego-RNN's main-run-rgb.py:
  stage 1: the ConvLSTM and the classifier; the whole backbone is frozen.
  stage 2: also layer4[0..2].conv1 / conv2 and the ResNet fc (the CAM weights), and the MS / OP
           heads of SAMSOPNet. layer4's downsample and every BatchNorm stay frozen.
Flow (FlowResNet34), as in main-run-flow.py: one stage, every parameter trains and the
  BatchNorms run in train mode (batch statistics, running averages updated).
Two-stream (TwoStream), as in main-run-twoStream.py: one stage; the new classifier, the RGB
  ConvLSTM, RGB layer4[0..2].conv1 / conv2 and RGB fc at the base lr, and the whole flow layer4
  (BatchNorms included, in train mode as in the original) at a small lr (1e-4).

Mode rule: a module whose parameters are all frozen is put in eval mode, so frozen BatchNorms
keep their ImageNet statistics and the dropouts of unused per-stream classifiers stay off.

Speed: a frozen layer builds no autograd graph as long as neither its parameters nor its input
require grad. In the RGB models every parameter before layer4 is always frozen, so stem..layer3
never records a graph, and in stage 1 nothing in the backbone does (tests check both).
"""
import torch.nn as nn

from .egornn import EgoRNN
from .flow import FlowResNet34
from .samsop import SAMSOPNet
from .twostream import TwoStream

RGB_STAGE1 = ("convlstm.", "classifier.")
RGB_STAGE2 = RGB_STAGE1 + tuple(f"backbone.layer4.{b}.conv{k}." for b in range(3) for k in (1, 2)) + (
    "backbone.fc.",)


def _groups(model, stage):
    """{group name: tuple of parameter-name prefixes} of the trainable parameters."""
    if isinstance(model, SAMSOPNet):
        if stage == 1:
            return {"main": tuple("egornn." + p for p in RGB_STAGE1)}
        return {"main": tuple("egornn." + p for p in RGB_STAGE2) + ("ms_head.", "op_head.")}
    if isinstance(model, EgoRNN):
        return {"main": RGB_STAGE1 if stage == 1 else RGB_STAGE2}
    if isinstance(model, FlowResNet34):
        return {"main": ("",)}
    if isinstance(model, TwoStream):
        return {"main": ("classifier.",) + tuple("rgb_model." + p for p in RGB_STAGE2 if p != "classifier."),
                "flow_layer4": ("flow_model.layer4.",)}
    raise TypeError(f"no training stages defined for {type(model).__name__}")


def _check_stage(model, stage):
    if isinstance(model, (EgoRNN, SAMSOPNet)):
        if stage not in (1, 2):
            raise ValueError(f"RGB models train in stage 1 or 2, got {stage}")
    elif stage not in (1, None):
        raise ValueError(f"{type(model).__name__} has a single training stage (1), got {stage}")


def trainable_names(model, stage):
    """{group name: [parameter names]} trainable in this stage."""
    _check_stage(model, stage)
    groups = _groups(model, stage)
    return {g: [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
            for g, prefixes in groups.items()}


def set_stage(model, stage):
    """Set requires_grad on every parameter; return the list of trainable parameters."""
    names = {n for group in trainable_names(model, stage).values() for n in group}
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    return params


def set_train_mode(model, stage):
    """model.train(), then eval() for every module whose parameters are all frozen in this stage
    (every BatchNorm of the RGB models; nothing in the flow model)."""
    names = {n for group in trainable_names(model, stage).values() for n in group}
    model.train()
    for prefix, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(prefix=prefix)]
        if own and not any(n in names for n in own):
            module.eval()
    return model


def param_groups(model, stage, lr, flow_lr=None):
    """Optimizer parameter groups (calls set_stage). Two-stream: [base lr group, flow layer4 at
    flow_lr]; every other model: one group at lr. Each group carries a "name"."""
    set_stage(model, stage)
    params = dict(model.named_parameters())
    groups = []
    for g, names in trainable_names(model, stage).items():
        groups.append({"name": g, "params": [params[n] for n in names],
                       "lr": flow_lr if g == "flow_layer4" else lr})
    return groups
