"""Order-prediction (OP) self-supervised head after OPN (Lee et al. ICCV 2017), docs/design.md §4.

Four frames of the clip, taken in temporal order, are shuffled by one of 12 permutation classes;
the head predicts the class. The 24 orders of 4 frames form 12 classes because an order and its
reverse share a class (an action reads the same forwards and backwards, e.g. open/close), and
the sampler shows either of the two with probability 0.5.

    per-frame feature (in_dim) -> fc6 (shared, 1024, ReLU, Dropout 0.5)
    each of the 6 pairs i < j:  concat(fc6_i, fc6_j) -> fc7 (shared, 512, ReLU, Dropout 0.5)
    concat of the 6 -> fc8 -> 12 logits (cross-entropy)

Per-frame features (SAMSOPNet, `--opInput`): "the end of ResNet-34" in the paper's words, taken
from the backbone pass the clip already had:
    flat    the layer4 map f_bn of the frame, flattened: 512*s*s inputs to fc6 (s = 7 at 224 px),
            as the paper's code (nn.Linear(7*7*512, 1024)) and OPN's fc6 on conv features;
    pooled  its global average, 512 inputs (a smaller fc6; an option, not the paper's).
Unlike the paper's code, the head has non-linearities, reverses permutations and draws frames
and orders from a generator the caller can seed; the 4 frames are 4 different frames of the
video (a short video repeats frames in a clip, and two equal frames make the order unknowable).
"""
from itertools import combinations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_share import draw_rows

NUM_FRAMES = 4


class OrderPredictionHead(nn.Module):
    # OPN's 12 classes (0-based), one order of each forward/backward pair.
    PERMUTATIONS = ((0, 1, 2, 3), (0, 2, 1, 3), (0, 2, 3, 1), (0, 1, 3, 2), (0, 3, 1, 2), (0, 3, 2, 1),
                    (1, 0, 2, 3), (1, 0, 3, 2), (1, 2, 0, 3), (2, 0, 1, 3), (2, 0, 3, 1), (2, 1, 0, 3))
    PAIRS = tuple(combinations(range(NUM_FRAMES), 2))  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)

    def __init__(self, in_dim=512):
        super().__init__()
        self.in_dim = in_dim
        self.fc6 = nn.Sequential(nn.Linear(in_dim, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc7 = nn.Sequential(nn.Linear(2 * 1024, 512), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc8 = nn.Linear(len(self.PAIRS) * 512, len(self.PERMUTATIONS))

    @classmethod
    def permutation_table(cls):
        """(12, 2, 4) long: for each class its forward order and its reverse."""
        forward = torch.tensor(cls.PERMUTATIONS)
        return torch.stack([forward, forward.flip(1)], dim=1)

    @classmethod
    def sample(cls, batch, T, generator=None, frame_numbers=None):
        """Draw the order-prediction task for a batch of clips of T frames.

        frame_numbers (B, T), optional: the video frame each clip position shows (non-decreasing);
        positions that repeat the previous position's frame are never drawn.
        Returns frame_idx (B, 4): 4 positions of different frames, sorted (temporal order);
        order (B, 4): the shuffle, i.e. shown frame k is frame_idx[:, order[:, k]];
        target (B,): its class, the same for an order and its reverse."""
        if T < NUM_FRAMES:
            raise ValueError(f"order prediction needs at least {NUM_FRAMES} frames per clip, got {T}")
        # Under torchrun the draw is made for the whole global batch and cut to this process's rows
        # (models/batch_share.py), so the tasks do not depend on the number of processes.
        total, rows = draw_rows(batch)
        keys = torch.rand(total, T, generator=generator)[rows]
        if frame_numbers is not None:
            frame_numbers = frame_numbers.cpu()
            repeat = torch.zeros(batch, T, dtype=torch.bool)
            repeat[:, 1:] = frame_numbers[:, 1:] == frame_numbers[:, :-1]
            if ((~repeat).sum(1) < NUM_FRAMES).any():
                raise ValueError(f"order prediction needs {NUM_FRAMES} different frames per clip; "
                                 f"a clip shows fewer (use longer videos or a larger --seqLen)")
            keys = keys.masked_fill(repeat, 2.0)  # after every real key in [0, 1)
        frame_idx = keys.argsort(dim=1)[:, :NUM_FRAMES]
        frame_idx = frame_idx.sort(dim=1).values
        target = torch.randint(len(cls.PERMUTATIONS), (total,), generator=generator)[rows]
        reverse = (torch.rand(total, generator=generator) < 0.5).long()[rows]
        order = cls.permutation_table()[target, reverse]
        return frame_idx, order, target

    def forward(self, frame_feats):
        """frame_feats (B, 4, in_dim), already in the shuffled order -> (B, 12) logits."""
        f6 = self.fc6(frame_feats)
        pairs = torch.stack([torch.cat([f6[:, i], f6[:, j]], dim=1) for i, j in self.PAIRS], dim=1)
        f7 = self.fc7(pairs)  # (B, 6, 512)
        return self.fc8(torch.flatten(f7, 1))

    @staticmethod
    def loss(logits, target):
        """Cross-entropy over the 12 permutation classes, in float32."""
        return F.cross_entropy(logits.float(), target)
