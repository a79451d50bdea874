"""BatchNorm statistics for a backbone without pretrained weights.

Every BatchNorm stays in eval mode in both stages (docs/design.md §1), so with `--pretrained none` the
layers would keep their initial statistics (mean 0, variance 1) and a random ResNet-34 would
emit layer4 activations around 50 +- 60, saturating every ConvLSTM gate. Used only when no
pretrained weights are given: the statistics are estimated once, before stage 1, from training
clips (no labels, no gradients); then they are frozen as usual."""
import torch
from torch import nn
from torch.utils.data import DataLoader

from utils.data import EpochSampler, SeededDataset


@torch.no_grad()
def calibrate_batchnorm(model, train_set, exp, num_clips=32):
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    n = min(num_clips, len(train_set))
    loader = DataLoader(SeededDataset(train_set),
                        batch_size=8, sampler=list(EpochSampler(len(train_set), True, exp.args.seed + 12345))[:n],
                        num_workers=0)
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all calibration batches
        m.train()
    for batch in loader:
        exp.forward(model, {k: (v.to(exp.device) if torch.is_tensor(v) else v) for k, v in batch.items()},
                    None, train=False)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
    print(f"--pretrained none: BatchNorm statistics estimated from {n} training clips "
          f"(random backbone; CAM attention is untrained)")
