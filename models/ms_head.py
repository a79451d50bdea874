"""Motion-segmentation (MS) self-supervised head of SparNet (Planamente et al. 2020), docs/design.md §3.

From the 512 x s x s features of one frame it predicts that frame's motion map (mmaps) at s x s:
    ReLU -> Conv1x1(512 -> 100) -> flatten (100*s*s) -> Linear(-> 2*s*s)   classification
                                                      -> Linear(-> s*s) -> sigmoid   regression
Classification gives two logits per position (static, moving), trained with per-position
cross-entropy against the maps binarised at 0.4; there is no softmax inside (the paper's code
applied softmax before CrossEntropyLoss, i.e. twice). Regression gives one value in [0, 1] per
position (the paper's code left it unbounded), trained with mean squared error on the raw maps.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN = 100


class MotionSegmentationHead(nn.Module):
    def __init__(self, in_channels=512, size=7, regression=False):
        super().__init__()
        self.size, self.regression = size, regression
        self.conv = nn.Conv2d(in_channels, HIDDEN, kernel_size=1)
        self.fc = nn.Linear(HIDDEN * size * size, (1 if regression else 2) * size * size)

    def forward(self, f):
        """f (N, C, s, s) -> (N, 2, s, s) logits, or (N, s, s) in [0, 1] for regression."""
        N, _, h, w = f.shape
        s = self.size
        if (h, w) != (s, s):
            raise ValueError(f"MS head built for {s}x{s} maps got {h}x{w}: build it with "
                             f"size=feature_map_size(frame size) (112 px -> 4, 224 px -> 7)")
        y = self.fc(torch.flatten(self.conv(F.relu(f)), 1))
        if self.regression:
            return torch.sigmoid(y).view(N, s, s)
        # The Linear output is laid out position-major, (s*s, 2), as in SparNet's code.
        return y.view(N, s * s, 2).transpose(1, 2).reshape(N, 2, s, s)

    def loss(self, out, target):
        """Mean over positions and frames. out (..., 2, s, s) or (..., s, s); target (..., s, s)
        with {0,1} values (classification: the dataset binarises the maps, once) or values in
        [0, 1] (regression). Targets outside that set are an error, not silently rounded."""
        s = self.size
        target = target.reshape(-1, s, s)
        if self.regression:
            _check(((target >= 0) & (target <= 1)).all(), "regression MS targets must lie in [0, 1]")
            return F.mse_loss(out.reshape(-1, s, s), target.to(out.dtype))
        _check(((target == 0) | (target == 1)).all(), "classification MS targets must be 0 or 1 (binarised maps)")
        return F.cross_entropy(out.reshape(-1, 2, s, s), target.long())


def _check(ok, message):
    """Raise ValueError when the 0-dim bool tensor `ok` is False; on a GPU the check runs on the
    device (an asynchronous assert), so the training step does not wait for the host."""
    if ok.device.type == "cuda":
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)
