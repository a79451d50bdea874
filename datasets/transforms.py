"""Clip transforms of Ego-RNN (docs/design.md §1), drawn ONCE per clip.

One `ClipParams` (crop scale, crop position, flip) is drawn per clip with python's `random`
and applied identically to every RGB frame, every flow image and every motion map of that
clip (and, in the two-stream case, to both streams, as the original does).

Training (``train=True``), per image:
  1. resize the shorter side to ``resize_size(frameSize)`` = round(256 / 224 * frameSize)
     (256 for the default 224), long side int(R * long / short), PIL bilinear;
  2. multi-scale corner crop: a square of int(short_side * scale), scale in
     (1, 0.875, 0.75, 0.65625), at one of 5 positions (centre, top-left, top-right,
     bottom-left, bottom-right);
  3. resize the crop to frameSize x frameSize (PIL bilinear);
  4. horizontal flip with probability 0.5; a flipped flow_x image is inverted (255 - v)
     because the horizontal motion changes sign; flow_y is not.
Test (``train=False``): resize the shorter side to R, then centre crop frameSize with
x1 = int(round((w - frameSize) / 2)) -- exactly torchvision's `resize` + `center_crop` on PIL
images, which is exactly the original's Scale + CenterCrop (checked in tests/test_datasets.py).
Then ToTensor (/255) and normalisation (ImageNet mean/std for RGB; 0.449/0.226 for flow).
With ``normalize=False`` the clip stays uint8 (same pixels, same layout) and `normalize_inputs`
applies exactly those float32 operations later, on the GPU: a quarter of the bytes through the
DataLoader's shared memory, pinned memory and the host-to-device copy.

On a GPU the RGB frames can skip PIL altogether (the DataLoader workers were the bottleneck:
about 25 clips/s per worker at 224 px): the workers send the decoded frames as they are, uint8,
with each clip's geometry (`ClipTransform.spec`), and `clips_on_device` does steps 1-4 on the
GPU with torch's antialiased bilinear resize (a port of PIL's filter), rounding to integers after
each resize as PIL does. Its pixels differ from PIL's by at most a few levels where PIL's
fixed-point arithmetic rounds the other way (tests/test_speed.py); CPU runs always use PIL.

Differences from the original Ego-RNN code, all confined to training augmentation:
  * crop positions are the intended ones: the original's 'tr' crop starts at y1=1 and its
    'bl' crop at x1=1 (one row/column short of a square), and its centre box is one pixel
    smaller when the crop size is odd. We do NOT reproduce that off-by-one; the crops here
    are exact squares of the stated size at the stated corner.
  * the original flips the whole resized image and then crops; here the crop is taken and
    the (small) result flipped. The set of (region, flip) pairs is the same (the 5 positions
    are mirror-symmetric) and each is equally likely, so the augmentation distribution is
    the same, with less work.

Motion maps follow the same geometry: the crop box is mapped to the map's own pixel grid
(so a map of another resolution still lines up), the boxed region is resized straight to
mapSize x mapSize (PIL bilinear, float precision), flipped with the clip, divided by 255 and
then binarised (value > 0.4 -> 1) for classification, or kept raw in [0, 1] for regression.
"""
import random
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOW_MEAN = 0.449  # mean of the ImageNet means, as the original
FLOW_STD = 0.226  # mean of the ImageNet stds

SCALES = (1.0, 0.875, 0.75, 0.65625)
POSITIONS = ("c", "tl", "tr", "bl", "br")
MMAP_THRESHOLD = 0.4

_BILINEAR = InterpolationMode.BILINEAR


@dataclass(frozen=True)
class ClipParams:
    """Augmentation parameters shared by all images of one clip."""

    scale: float = 1.0
    position: str = "c"
    flip: bool = False


def resize_size(frameSize):
    """Short side before cropping: 256 for frameSize 224, scaled proportionally otherwise."""
    return int(round(frameSize * 256 / 224))


def resized_wh(w, h, short):
    """(width, height) after resizing the shorter side to `short` (original's Scale rule)."""
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


class ClipTransform:
    """Per-clip transform. Call `draw()` once per clip, then `rgb`, `flow`, `mmaps` with the
    returned params (None in test mode) for all images of that clip."""

    def __init__(self, train, frameSize=224, mapSize=7, regression=False,
                 threshold=MMAP_THRESHOLD, scales=SCALES):
        if frameSize < 1 or mapSize < 1:
            raise ValueError(f"frameSize and mapSize must be positive, got {frameSize}, {mapSize}")
        self.train = bool(train)
        self.frameSize = int(frameSize)
        self.mapSize = int(mapSize)
        self.regression = bool(regression)
        self.threshold = float(threshold)
        self.scales = tuple(scales)
        self.short = resize_size(self.frameSize)
        self._mean = np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
        self._std = np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)

    # ---- parameters -------------------------------------------------------------------
    def draw(self):
        """Draw the clip's parameters with python `random` (None at test time)."""
        if not self.train:
            return None
        flip = random.random() < 0.5
        scale = self.scales[random.randint(0, len(self.scales) - 1)]
        position = POSITIONS[random.randint(0, len(POSITIONS) - 1)]
        return ClipParams(scale=scale, position=position, flip=flip)

    def crop_box(self, w, h, params):
        """(left, top, width, height) of the crop in the coordinates of the image resized
        to `resized_wh(w, h, self.short)`."""
        rw, rh = resized_wh(w, h, self.short)
        if params is None:
            f = self.frameSize
            return int(round((rw - f) / 2.0)), int(round((rh - f) / 2.0)), f, f
        c = int(min(rw, rh) * params.scale)
        pos = params.position
        if pos == "c":
            left, top = rw // 2 - c // 2, rh // 2 - c // 2
        elif pos == "tl":
            left, top = 0, 0
        elif pos == "tr":
            left, top = rw - c, 0
        elif pos == "bl":
            left, top = 0, rh - c
        elif pos == "br":
            left, top = rw - c, rh - c
        else:
            raise ValueError(f"unknown crop position {pos!r}")
        return left, top, c, c

    def spec(self, w, h, params):
        """The clip's geometry as 8 ints for `clips_on_device`: resized width and height, crop
        box (left, top, width, height) in the resized image, flip, output frame size."""
        rw, rh = resized_wh(w, h, self.short)
        return [rw, rh, *self.crop_box(w, h, params), int(params is not None and params.flip), self.frameSize]

    # ---- images -------------------------------------------------------------------------
    def frame(self, img, params):
        """PIL image -> PIL image frameSize x frameSize (resized and cropped, NOT flipped)."""
        img = TF.resize(img, self.short, interpolation=_BILINEAR)
        if params is None:
            return TF.center_crop(img, self.frameSize)
        w, h = img.size
        left, top, cw, ch = self.crop_box(w, h, params)  # w, h already at the resized size
        img = TF.crop(img, top, left, ch, cw)
        return TF.resize(img, [self.frameSize, self.frameSize], interpolation=_BILINEAR)

    def _arrays(self, imgs, params):
        """Transform a list of PIL images into one uint8 array (T, F, F[, C]); images that
        are the same object (a frame used twice) are transformed once."""
        done = {}
        out = []
        for im in imgs:
            key = id(im)
            if key not in done:
                done[key] = np.asarray(self.frame(im, params))
            out.append(done[key])
        arr = np.stack(out)
        if params is not None and params.flip:
            arr = arr[:, :, ::-1]
        return arr

    def rgb(self, imgs, params, normalize=True):
        """List of T RGB PIL images -> float32 tensor (T, 3, F, F), ImageNet-normalised
        (uint8 (T, 3, F, F) with normalize=False: see `normalize_inputs`)."""
        arr = self._arrays(imgs, params)  # T, F, F, 3 uint8
        if not normalize:
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        out = np.empty((arr.shape[0], 3) + arr.shape[1:3], np.float32)
        out[...] = arr.transpose(0, 3, 1, 2)
        # the same float32 operations as ToTensor (/255) and Normalize, done in numpy: cheaper
        # than torch's thread pool for these small arrays, and bit-identical
        out /= np.float32(255)
        out -= self._mean
        out /= self._std
        return torch.from_numpy(out)

    def flow(self, xs, ys, params, normalize=True):
        """Lists of k flow_x / flow_y 'L' PIL images -> float32 tensor (2k, F, F), channels
        x1, y1, ..., xk, yk, normalised with FLOW_MEAN / FLOW_STD (uint8 with normalize=False)."""
        ax = self._arrays(xs, params)
        ay = self._arrays(ys, params)
        if params is not None and params.flip:
            ax = 255 - ax  # horizontal motion changes sign; 128 (zero motion) -> 127
        k, f1, f2 = ax.shape
        out = np.empty((2 * k, f1, f2), dtype=np.float32 if normalize else np.uint8)
        out[0::2] = ax
        out[1::2] = ay
        if not normalize:
            return torch.from_numpy(out)
        out /= np.float32(255)
        out -= np.float32(FLOW_MEAN)
        out /= np.float32(FLOW_STD)
        return torch.from_numpy(out)

    def mmaps(self, maps, params):
        """List of T motion-map PIL images ('L') -> float32 tensor (T, s, s): same crop and
        flip as the frames, resized to s x s, /255, binarised at the threshold unless
        regression."""
        s = self.mapSize
        done = {}
        out = []
        for im in maps:
            key = id(im)
            if key not in done:
                w, h = im.size
                rw, rh = resized_wh(w, h, self.short)
                left, top, cw, ch = self.crop_box(w, h, params)
                sx, sy = w / rw, h / rh
                box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
                small = im.convert("F").resize((s, s), Image.BILINEAR, box=box)
                done[key] = np.asarray(small, dtype=np.float32)
            out.append(done[key])
        arr = np.stack(out) / np.float32(255)
        if params is not None and params.flip:
            arr = arr[:, :, ::-1]
        arr = np.clip(arr, 0.0, 1.0)
        if not self.regression:
            arr = (arr > self.threshold).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


_CONSTANTS = {}


def _const(values, device):
    """A float32 constant on the device, per channel (3, 1, 1) for a tuple, made once per device
    (a new one each step would be a host-to-device copy that waits for the GPU). Never a Python
    scalar: a scalar divisor may become a multiplication by its reciprocal (other last bits)."""
    key = (values, str(device))
    if key not in _CONSTANTS:
        t = torch.tensor(values, dtype=torch.float32, device=device)
        _CONSTANTS[key] = t.view(3, 1, 1) if t.dim() else t
    return _CONSTANTS[key]


HOST_KEYS = ("rgb_spec", "frame_numbers")  # read on the host (normalize_inputs, the OP draw): never moved to the GPU


def normalize_inputs(batch):
    """Normalise the uint8 "rgb" / "flow" tensors of a batch (made with normalize=False) in
    place of the dict, on whatever device they are: the same float32 operations, in the same
    order, as `ClipTransform.rgb` / `.flow`, so the values are identical to normalising in the
    DataLoader (tests/test_speed.py). Float tensors are left alone. A batch with "rgb_src"
    (decoded frames, see `clips_on_device`) gets its "rgb" made from them first."""
    if "rgb_src" in batch:
        batch["rgb"] = clips_on_device(batch.pop("rgb_src"), batch.pop("rgb_spec").tolist())
    for key in ("rgb", "flow"):
        x = batch.get(key)
        if x is None or x.dtype != torch.uint8:
            continue
        out = x.to(torch.float32).div_(_const(255.0, x.device))
        if key == "rgb":  # (..., 3, F, F)
            out.sub_(_const(IMAGENET_MEAN, x.device)).div_(_const(IMAGENET_STD, x.device))
        else:
            out.sub_(_const(FLOW_MEAN, x.device)).div_(_const(FLOW_STD, x.device))
        batch[key] = out
    return batch


def clips_on_device(src, specs):
    """`ClipTransform.frame` + flip for a batch of clips, in torch on src's device.
    src: uint8 (B, T, H, W, 3) decoded frames, or a list of B (T, H, W, 3) of different sizes;
    specs: B x 8 ints (`ClipTransform.spec`). Returns uint8 (B, T, 3, F, F), F = specs[b][7].
    Clips of one source size are resized together, and crops of one size resized together."""
    B, frame_size = len(specs), specs[0][7]
    if torch.is_tensor(src) and all(spec[:2] == specs[0][:2] for spec in specs):
        rw, rh = specs[0][:2]
        frames = src.flatten(0, 1).permute(0, 3, 1, 2).float()  # (B*T, 3, H, W)
        resized = list(_pil_resize(frames, rh, rw).unflatten(0, (B, -1)))
    else:
        resized = [_pil_resize(s.permute(0, 3, 1, 2).float(), spec[1], spec[0]) for s, spec in zip(src, specs)]
    out = [None] * B
    for crop in sorted({tuple(spec[4:6]) for spec in specs}):
        members = [b for b in range(B) if tuple(specs[b][4:6]) == crop]
        cw, ch = crop
        x = torch.stack([resized[b][:, :, specs[b][3]:specs[b][3] + ch, specs[b][2]:specs[b][2] + cw]
                         for b in members])  # (n, T, 3, ch, cw)
        if (ch, cw) != (frame_size, frame_size):  # PIL returns a same-size resize unchanged
            x = _pil_resize(x.flatten(0, 1), frame_size, frame_size).unflatten(0, (len(members), -1))
        for b, clip in zip(members, x):
            out[b] = clip.flip(-1) if specs[b][6] else clip
    return torch.stack(out).to(torch.uint8)


def _pil_resize(x, h, w):
    """PIL's bilinear resize of uint8 images, on float tensors holding integers: the width
    first, rounded to integers, then the height, rounded (PIL's two passes and its uint8
    intermediate image)."""
    if x.shape[-1] != w:
        x = _resize(x, x.shape[-2], w)
    if x.shape[-2] != h:
        x = _resize(x, h, w)
    return x


def _resize(x, h, w):
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255)
