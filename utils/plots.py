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


def lr_decays(rows):
    """The epochs that start at a lower lr than the epoch before (rows as in log.csv)."""
    lrs = _col(rows, 1)
    return [int(rows[i][0]) for i in range(1, len(rows)) if lrs[i] < lrs[i - 1]]


def save_curves(rows, path, title="", selected=None):
    """Loss and accuracy against epoch, train and test (rows as in log.csv); a stage with heads
    adds a third panel: the MS loss, the OP loss and (right axis) the OP accuracy, the two
    self-supervised tasks. Every panel marks the lr decays (dotted, between the last epoch at the
    old lr and the first at the new one) and the `selected` epoch, the one best_model.pth holds
    (dashed; a dot on its test accuracy). Returns the labels of the lines drawn."""
    epochs = _col(rows, 0)
    heads = {label: _col(rows, i) for label, i in (("MS loss", 6), ("OP loss", 7), ("OP accuracy", 8))}
    heads = {k: v for k, v in heads.items() if not np.all(np.isnan(v))}
    fig, axes = plt.subplots(1, 3 if heads else 2, figsize=(15 if heads else 10, 3.8))
    ax1, ax2 = axes[0], axes[1]
    drawn = []

    def plot(ax, x, y, label, **kw):
        ax.plot(x, y, label=label, **kw)
        drawn.append(label)
    plot(ax1, epochs, _col(rows, 2), "train loss")
    plot(ax1, epochs, _col(rows, 4), "test loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    plot(ax2, epochs, _col(rows, 3), "train accuracy")
    plot(ax2, epochs, _col(rows, 5), "test accuracy")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_ylim(0, 100)
    if heads:
        ax3 = axes[2]
        for label in ("MS loss", "OP loss"):
            if label in heads:
                plot(ax3, epochs, heads[label], label)
        ax3.set_xlabel("epoch")
        ax3.set_ylabel("loss (train)")
        lines = ax3.get_lines()
        if "OP accuracy" in heads:
            right = ax3.twinx()
            plot(right, epochs, heads["OP accuracy"], "OP accuracy", color="C2", linestyle="--")
            right.set_ylabel("OP accuracy (%)")
            right.set_ylim(0, 100)
            lines = lines + right.get_lines()
        ax3.legend(lines, [ln.get_label() for ln in lines], fontsize=8)
        ax3.set_title("self-supervised heads", fontsize=9)
    for i, e in enumerate(lr_decays(rows)):
        for ax in axes:
            ax.axvline(e - 0.5, color="0.5", linestyle=":", linewidth=1, label="lr decay" if i == 0 else None)
        drawn.append(f"lr decay before epoch {e}")
    if selected:
        for ax in axes:
            ax.axvline(selected, color="C3", linestyle="--", linewidth=1,
                       label=f"selected: epoch {selected} (best_model.pth)")
        ax2.plot([selected], [dict(zip(epochs, _col(rows, 5))).get(selected, np.nan)], "o", color="C3")
        drawn.append(f"selected epoch {selected}")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return drawn


def denormalise(clip, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """(T,3,H,W) normalised -> (T,H,W,3) in [0,1]."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (clip.cpu().float() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def cam_maps(attention, size):
    """(T, h, w) attention -> (T, H, W) numpy maps, bilinearly upsampled to size (H, W) and
    scaled to [0, 1] per frame, as the figures show them."""
    up = F.interpolate(attention.float().cpu()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return ((up - lo) / (hi - lo + 1e-12)).numpy()


def cam_overlay(frames, maps, alpha=0.5):
    """Frames (T, H, W, 3) in [0, 1] with the maps (T, H, W) on top in the jet colours, as
    imshow(map, cmap="jet", alpha) over the frame draws them -> uint8 (T, H, W, 3)."""
    jet = plt.get_cmap("jet")(maps)[..., :3]
    return np.round(255 * ((1 - alpha) * frames + alpha * jet)).astype(np.uint8)


def save_cam_strip(frames, maps, path, title="", max_frames=8, frame_labels=None):
    """Up to max_frames of a clip, evenly spaced: the frames (T, H, W, 3) in [0, 1] above, the
    attention maps (T, H, W) in [0, 1] on top of them below, with the colour scale at the right."""
    T = len(frames)
    idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    fig, axes = plt.subplots(2, len(idx), figsize=(1.9 * len(idx), 4.0), squeeze=False)
    for j, t in enumerate(idx):
        axes[0, j].imshow(frames[t])
        axes[1, j].imshow(frames[t])
        axes[1, j].imshow(maps[t], cmap="jet", alpha=0.5)
        axes[0, j].set_title(frame_labels[t] if frame_labels else f"frame {t + 1}", fontsize=8)
        for r in range(2):
            axes[r, j].axis("off")
    fig.suptitle(title, fontsize=9)
    width = fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / width, 1))  # room for the colour bar
    bottom = axes[1, 0].get_position()
    cax = fig.add_axes((1 - 1.05 / width, bottom.y0, 0.12 / width, bottom.height))
    bar = fig.colorbar(plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1)), cax=cax)
    bar.set_label("attention (per frame: min 0, max 1)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)


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
        pred = int(out["logits"][0].argmax())
        name = test_set.video_ids[i]
        path = os.path.join(out_dir, name.replace(os.sep, "_").replace("/", "_") + ".png")
        save_cam_strip(denormalise(clip), cam_maps(out["attention"][0], clip.shape[-2:]), path,
                       f"{name}  true: {test_set.classes[label]}  predicted: {test_set.classes[pred]}",
                       max_frames)
        paths.append(path)
        if len(paths) >= num_videos:
            break
    return paths


def save_confusion_matrix(labels, preds, classes, path, title=""):
    """Row-normalised confusion matrix: cell (true i, predicted j) is the share of class i's test
    videos predicted as j, so each row sums to 1 (a class without test videos: a row of 0).
    Returns the counts."""
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
    ax.set_title(f"{title}\nrows normalised: each row sums to 1 over the true class's test videos", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("share of the true class's test videos")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return cm


def save_per_class(per_class, counts, path, title=""):
    """Accuracy per class, sorted from best to worst, each bar labelled with the class's number
    of test videos (a class with 1 video can only score 0 or 100). Classes without test videos
    are left out. per_class: {class: accuracy % or None}; counts: {class: videos}."""
    shown = sorted(((a, c) for c, a in per_class.items() if a is not None), key=lambda x: (-x[0], x[1]))
    # 0.3 inch per class: 8-point counts and names stay apart at GTEA-61's 61 classes
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(shown) + 2), 5))
    xs = np.arange(len(shown))
    ax.bar(xs, [a for a, _ in shown], color="C0")
    for x, (a, c) in zip(xs, shown):
        ax.text(x, a + 1, str(counts[c]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([c for _, c in shown], rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}\n(number above a bar: test videos of the class)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return [c for _, c in shown]


def save_timeline(starts, ends, probs, classes, path, title="", max_actions=8):
    """Sliding-window predictions of a long video: the probability of the leading actions
    against time (each window drawn at its centre), and below it a strip coloured by the top-1
    action of each window, drawn over the middle of its window (stride wide when they overlap)."""
    starts, ends, probs = np.asarray(starts, float), np.asarray(ends, float), np.asarray(probs, float)
    centres = (starts + ends) / 2
    top1 = probs.argmax(1)
    # the actions that win some window first (by how many), then the most probable others
    order = sorted(set(top1.tolist()), key=lambda c: (-(top1 == c).sum(), -probs[:, c].max()))
    order += [int(c) for c in np.argsort(-probs.max(0)) if c not in order]
    shown = order[:max_actions]
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(shown)}
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [4, 0.6]})
    for c in shown:
        ax.plot(centres, probs[:, c], marker="o" if len(centres) < 40 else None, ms=3, color=colours[c],
                label=classes[c])
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    half = np.diff(centres).min() / 2 if len(centres) > 1 else (ends[0] - starts[0]) / 2
    for c0, c in zip(centres, top1):
        strip.broken_barh([(c0 - half, 2 * half)], (0, 1), color=colours.get(int(c), (0.6, 0.6, 0.6)))
    strip.set_yticks([])
    strip.set_ylabel("top-1", rotation=0, ha="right", va="center", fontsize=8)
    strip.set_xlabel("time (s)")
    strip.set_xlim(starts.min(), ends.max())
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
