"""Ego-RNN warp-flow stream: ResNet-34 on stacks of 5 flow frames (docs/design.md §2).

Input: 10 channels = 5 consecutive (flow_x, flow_y) pairs, interleaved x1, y1, ..., x5, y5.
Cross-modality init: the ImageNet conv1 kernel averaged over its 3 RGB channels and repeated over
the 10 flow channels; the rest of the trunk is ImageNet's, the ImageNet fc is dropped.
Head: avgpool -> 512 -> Dropout(0.5) -> Linear(512, C).
With S stacks per video (evaluation), the logits and the features are averaged over the stacks.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .backbone import adopt_trunk, load_resnet34_state, load_trunk, warn_untrained


class FlowResNet34(nn.Module):
    def __init__(self, num_classes, pretrained="imagenet", in_channels=10):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        net = torchvision.models.resnet34(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        state = load_resnet34_state(pretrained)
        if state is None:
            warn_untrained("the flow ResNet-34", cam=False)
        else:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            rgb = state["conv1.weight"]  # (64, 3, 7, 7)
            state["conv1.weight"] = rgb.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
            net.fc = nn.Identity()
            load_trunk(net, state, pretrained)
        adopt_trunk(self, net)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, num_classes))

    def forward(self, x):
        """x (B, 10, H, W) or (B, S, 10, H, W) -> dict(logits (B, C), features (B, 512))."""
        stacks = x.dim() == 5
        B = x.shape[0]
        if stacks:
            x = x.flatten(0, 1)
        x = self.layer4(self.trunk(x))
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self.classifier(features)
        if stacks:
            features, logits = features.view(B, -1, 512).mean(1), logits.view(B, -1, self.num_classes).mean(1)
        return dict(logits=logits, features=features)

    def trunk(self, x):
        """stem..layer3."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))
