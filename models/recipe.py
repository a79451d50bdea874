"""The paper's recipe in one place: for each experiment and training stage, which heads are on,
what data they read, the forward, the total loss, the optimisers and the schedules (paper §4.2;
docs/design.md §1-§4). Read it next to the paper's Tables 1-3:

    experiment  script             model                               stages
    rgb         main_rgb.py        Ego-RNN (--noAttention: ConvLSTM)    1, 2
    ms          main_ms.py         Ego-RNN + MS head                   1, 2   (MS in stage 2)
    ms_op       main_ms_op.py      SAMSOP-Net: Ego-RNN + MS + OP       1, 2   (heads in stage 2)
    flow        main_flow.py       warp-flow ResNet-34                 1
    twostream   main_twostream.py  flow + RGB, trained jointly         1

Stage 1 trains the ConvLSTM and the classifier on frozen ImageNet features; stage 2 starts from
the best stage-1 model and also trains layer4's convolutions, the ResNet fc that drives the CAM
and the self-supervised heads (which parameters: models/stages.py). Total loss in stage 2:

    loss = CE(action) + msWeight * MS loss + opWeight * OP loss      (weights 1 in the paper)

Running a stage (data, loaders, checkpoints, logs) is utils/experiment.py's and utils/train.py's
job; this file only says what the paper trains.
"""
import warnings

import torch
import torch.nn.functional as F

from .backbone import feature_map_size
from .checkpoints import checkpoint_info
from .egornn import EgoRNN
from .flow import FlowResNet34
from .samsop import SAMSOPNet
from .stages import param_groups, set_train_mode
from .twostream import TwoStream

# experiment -> the family of its model (its architecture and checkpoint keys)
FAMILY = {"rgb": "rgb", "ms": "rgb", "ms_op": "rgb", "flow": "flow", "twostream": "twostream"}
EXPERIMENTS = tuple(FAMILY)
STAGES = {experiment: (1,) if family in ("flow", "twostream") else (1, 2) for experiment, family in FAMILY.items()}

# GTEA-61's four users and its fixed split (paper §4.1): S1, S3, S4 train, S2 tests.
USERS = ("S1", "S2", "S3", "S4")
TRAIN_USERS, TEST_USERS = ("S1", "S3", "S4"), ("S2",)

# Optimiser schedules per family and stage (docs/design.md §1-§2): lr, epochs, MultiStepLR
# milestones and factor; two-stream decays by 0.99 every epoch (StepLR(1, 0.99)).
DEFAULTS = {
    "rgb": {1: dict(lr=1e-3, numEpochs=300, stepSize=[25, 75, 150], decayRate=0.1),
            2: dict(lr=1e-4, numEpochs=150, stepSize=[25, 75], decayRate=0.1)},
    "flow": {1: dict(lr=1e-2, numEpochs=750, stepSize=[150, 300, 500], decayRate=0.5)},
    "twostream": {1: dict(lr=1e-2, numEpochs=250, stepSize=[1], decayRate=0.99)},
}
ADAM = dict(weight_decay=4e-5, eps=1e-4)   # RGB stages (Ego-RNN)
SGD = dict(momentum=0.9, weight_decay=5e-4)  # flow and two-stream
FLOW_LR = 1e-4    # two-stream: lr of the flow layer4, while the rest trains at the stage's lr
MS_WEIGHT = 1.0   # weights of the MS and OP losses in the total loss (1 in the paper)
OP_WEIGHT = 1.0
OP_FRAMES = 4  # frames the OP head puts back in order (OPN)


def at_least_fp32(t):
    """bf16 autocast outputs in float32 for the losses; a float64 run (the verifier's flow check)
    stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def forward(model, batch, family, heads=False, generator=None):
    """The forward of each model family, the one used by training, evaluate.py, predict.py,
    bench.py and the verifier. heads: also run the MS / OP heads of a SAMSOPNet (stage-2
    training); generator draws the OP head's frames and order."""
    if family == "flow":
        return model(batch["flow"])
    if family == "twostream":
        return model(batch["flow"], batch["rgb"])
    core = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if isinstance(core, SAMSOPNet):
        return model(batch["rgb"], generator=generator, heads=heads, frame_numbers=batch.get("frame_numbers"))
    return model(batch["rgb"])  # a plain EgoRNN has no heads


def build_model(family, num_classes, config, pretrained="none", heads=True):
    """The model of one family from a model configuration (Recipe.model_config, or a checkpoint's
    "model_config"): RGB models are SAMSOPNets (no heads for plain Ego-RNN), so that every RGB
    checkpoint has the same keys. heads=False leaves the MS and OP heads out (evaluation)."""
    if family == "rgb":
        size = config.get("mapSize") or feature_map_size(config.get("frameSize", 224))
        return SAMSOPNet(num_classes, mem_size=config.get("memSize", 512), attention=config.get("attention", True),
                         ms=config.get("ms") if heads else None, ms_input=config.get("msInput", "attention"),
                         op=bool(config.get("op")) and heads, pretrained=pretrained, ms_size=size,
                         op_input=config.get("opInput", "flat"))
    if family == "flow":
        return FlowResNet34(num_classes, pretrained=pretrained, in_channels=2 * config.get("stackSize", 5))
    if family == "twostream":
        flow = FlowResNet34(num_classes, pretrained=pretrained, in_channels=2 * config.get("stackSize", 5))
        rgb = EgoRNN(num_classes, mem_size=config.get("memSize", 512), attention=config.get("attention", True),
                     pretrained=pretrained)
        return TwoStream(num_classes, flow, rgb)
    raise ValueError(f"unknown model family {family!r}")


def checkpoint_model_config(path):
    """(family, num_classes, model configuration) of a checkpoint file: its record where it has one,
    else what its weights say (an original Ego-RNN file records nothing)."""
    info = checkpoint_info(path)
    meta = info["meta"]
    config = dict(meta.get("model_config") or {})
    for key in ("frameSize", "stackSize"):
        if meta.get(key) is not None:
            config.setdefault(key, meta[key])
    if info["mem_size"]:
        config["memSize"] = info["mem_size"]  # the ConvLSTM's weights say its size
    if info["stack_size"]:
        config["stackSize"] = info["stack_size"]
    if info["ms_size"]:
        config["mapSize"] = info["ms_size"]
    return info["family"], info["num_classes"], config


def build_from_checkpoint(path, heads=True):
    """A model shaped as the checkpoint at `path` says (weights not loaded: models.load_checkpoint)."""
    family, num_classes, config = checkpoint_model_config(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the checkpoint's come next
        return build_model(family, num_classes, config, pretrained="none", heads=heads)


class Recipe:
    """One stage of one experiment as the paper trains it. `args` holds the stage's settings with
    the paper's defaults filled in (utils/experiment.py: stage_args)."""

    def __init__(self, experiment, stage, args):
        self.experiment, self.stage, self.args = experiment, stage, args
        self.family = FAMILY[experiment]
        self.map_size = feature_map_size(args.frameSize)
        self.rgb_attention = True  # two-stream: the RGB model's, read from its checkpoint

    # ---- which heads are on (MS and OP are trained in stage 2 only, as in the paper)
    @property
    def ms(self):
        if self.experiment == "ms" or (self.experiment == "ms_op" and not self.args.noMS):
            return "regression" if self.args.regression else "classification"
        return None

    @property
    def op(self):
        return self.experiment == "ms_op"

    @property
    def heads_on(self):
        return self.stage == 2

    def modality(self, train):
        """What the dataset gives: RGB clips, with motion maps for the MS head's training targets."""
        if self.family in ("flow", "twostream"):
            return self.family
        return "rgb_mmaps" if (self.ms and self.heads_on and train) else "rgb"

    def model_config(self):
        a = self.args
        if self.family == "rgb":
            return {"attention": not a.noAttention, "memSize": a.memSize,
                    "ms": self.ms if self.heads_on else None,
                    "msInput": a.msInput, "op": self.op and self.heads_on, "opInput": a.opInput}
        if self.family == "flow":
            return {"stackSize": a.stackSize}
        return {"attention": self.rgb_attention, "memSize": a.memSize, "stackSize": a.stackSize}

    def build_model(self, pretrained, num_classes=None):
        if self.family == "twostream":
            raise AssertionError("two-stream models are built from their two checkpoints")
        return build_model(self.family, num_classes or self.num_classes,
                           {**self.model_config(), "mapSize": self.map_size}, pretrained)

    # ---- forward and losses
    def forward(self, model, batch, generator, train):
        return forward(model, batch, self.family, heads=train and self.heads_on, generator=generator)

    def losses(self, model, out, batch):
        """{"ce", "ms_loss", "op_loss", "loss"}: the action cross-entropy, the heads' losses (each
        head of `model` knows its own), and the total loss the optimiser minimises."""
        heads = getattr(model, "module", model)  # DistributedDataParallel wraps the model
        loss = F.cross_entropy(at_least_fp32(out["logits"]), batch["label"])
        result = {"ce": loss.detach()}
        if "ms_out" in out:
            ms_out = out["ms_out"].float()
            result["ms_loss"] = heads.ms_head.loss(ms_out.flatten(0, 1), batch["mmaps"].flatten(0, 1))
            loss = loss + self.args.msWeight * result["ms_loss"]
        if "op_logits" in out:
            result["op_loss"] = heads.op_head.loss(out["op_logits"], out["op_target"])
            loss = loss + self.args.opWeight * result["op_loss"]
        result["loss"] = loss
        return result

    # ---- what trains, and how
    def set_train_mode(self, model):
        set_train_mode(model, self.stage)

    def make_optimizer(self, model):
        a = self.args
        if self.family == "rgb":
            return torch.optim.Adam(param_groups(model, self.stage, a.lr), lr=a.lr, **ADAM)
        if self.family == "flow":
            return torch.optim.SGD(param_groups(model, self.stage, a.lr), lr=a.lr, **SGD)
        return torch.optim.SGD(param_groups(model, self.stage, a.lr, flow_lr=a.flowLr), lr=a.lr, **SGD)

    def make_scheduler(self, optimizer):
        a = self.args
        if self.family == "twostream":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=a.stepSize[0], gamma=a.decayRate)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=a.stepSize, gamma=a.decayRate)
