"""Figures: training curves, CAM overlays (the paper's Figure 5), confusion matrices."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.io import atomic_savefig  # noqa: E402


def _col(rows, i):
    return [float(r[i]) if r[i] != "" else np.nan for r in rows]


def save_curves(rows, path, title=""):
    """Loss and accuracy against epoch, train and test (rows as in log.csv)."""
    epochs = _col(rows, 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, _col(rows, 2), label="train loss")
    ax1.plot(epochs, _col(rows, 4), label="test loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, _col(rows, 3), label="train accuracy")
    ax2.plot(epochs, _col(rows, 5), label="test accuracy")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_ylim(0, 100)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def denormalise(clip, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """(T,3,H,W) normalised -> (T,H,W,3) in [0,1]."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (clip.cpu().float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def save_cam_figures(model, test_set, out_dir, device, num_videos=3, max_frames=8):
    """For a few test videos of different classes: frames with the attention map on top."""
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    seen, paths = set(), []
    for i in range(len(test_set)):
        label = test_set.labels[i]
        if label in seen:
            continue
        seen.add(label)
        item = test_set[i]
        clip = item["rgb"]
        out = model(clip[None].to(device), heads=False)
        if out.get("attention") is None:
            return paths
        attn = out["attention"][0].float()                      # (T, h, w), sums to 1 per frame
        pred = int(out["logits"][0].argmax())
        T, _, H, W = clip.shape
        up = F.interpolate(attn[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        up = (up - up.amin(dim=(1, 2), keepdim=True)) / (up.amax(dim=(1, 2), keepdim=True) - up.amin(dim=(1, 2), keepdim=True) + 1e-12)
        frames = denormalise(clip)
        idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
        fig, axes = plt.subplots(2, len(idx), figsize=(1.9 * len(idx), 4.0), squeeze=False)
        for j, t in enumerate(idx):
            axes[0, j].imshow(frames[t])
            axes[1, j].imshow(frames[t])
            axes[1, j].imshow(up[t].cpu().numpy(), cmap="jet", alpha=0.5)
            axes[0, j].set_title(f"frame {t + 1}", fontsize=8)
            for r in range(2):
                axes[r, j].axis("off")
        name = test_set.video_ids[i]
        fig.suptitle(f"{name}  true: {test_set.classes[label]}  predicted: {test_set.classes[pred]}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name.replace(os.sep, "_").replace("/", "_") + ".png")
        atomic_savefig(fig, path, dpi=90)
        plt.close(fig)
        paths.append(path)
        if len(paths) >= num_videos:
            break
    return paths


def save_confusion_matrix(labels, preds, classes, path, title=""):
    C = len(classes)
    cm = np.zeros((C, C), dtype=float)
    for t, p in zip(labels, preds):
        cm[t, p] += 1
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(5, 0.18 * C + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(C))
    ax.set_yticks(range(C))
    fs = 8 if C <= 20 else 5
    ax.set_xticklabels(classes, rotation=90, fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return cm
