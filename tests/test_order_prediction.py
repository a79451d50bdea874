"""The order-prediction head sees 4 distinct frames of its own clip, shuffled by the order its
label names (docs/design.md §4).

Every frame's layer4 map is replaced by a constant that names the frame: frame t of clip b is
b * T + t at every channel and position. Whatever the head reads of a frame (the pooled 512-d
vector or the flattened 512 x s x s map) is then that constant in every element, so the
head's input, caught by a forward pre-hook, says which frames it was shown and in which order.
The 12 classes are OPN's list, written here."""
import pytest
import torch

from utils import experiment as E

pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]

# OPN's 12 classes (docs/design.md §4), 0-based; an order and its reverse share a class.
OPN_CLASSES = ["0123", "0213", "0231", "0132", "0312", "0321", "1023", "1032", "1203", "2013", "2031", "2103"]
B, T, FRAME = 48, 7, 64       # clips, frames per clip, frame size (layer4 maps of 2 x 2)
S = 2


def samsop_model(tmp_path, extra=()):
    """SAMSOP-Net of stage 2 (MS + OP heads), built as the scripts build it."""
    args = E.base_parser("ms_op", "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--frameSize", str(FRAME),
         "--seqLen", str(T), "--memSize", "8", "--pretrained", "none", *extra])
    exp = E.Experiment("ms_op", args, 2, torch.device("cpu"), "fp32", 5, [f"c{i}" for i in range(5)])
    return exp, exp.build_model("none")


def frame_coded_backbone(x):
    """Stands in for ResNet34Backbone.forward: (ImageNet logits, f_bn, f_nobn) per frame, with the
    layer4 maps of frame n of the flattened batch equal to n everywhere."""
    n = x.shape[0]
    code = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 512, S, S).contiguous()
    return torch.zeros(n, 1000), code, code.clone()


def shown_frames(exp, model, monkeypatch, seed):
    """(frames shown to the OP head (B, 4) as (clip, frame) codes, op_target (B,))."""
    monkeypatch.setattr(model.egornn.backbone, "forward", frame_coded_backbone)
    seen = []
    hook = model.op_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    exp.set_train_mode(model)
    batch = {"rgb": torch.zeros(B, T, 3, FRAME, FRAME), "label": torch.zeros(B, dtype=torch.long),
             "mmaps": torch.zeros(B, T, S, S)}
    with torch.no_grad():
        out = exp.forward(model, batch, torch.Generator().manual_seed(seed), train=True)
    hook.remove()
    assert len(seen) == 1, "the OP head should run once per batch"
    x = seen[0]
    assert x.shape[:2] == (B, 4), x.shape
    x = x.flatten(2)
    # every element of a shown frame's features is that frame's code
    assert torch.equal(x, x[..., :1].expand_as(x)), "the OP head's input mixes frames"
    codes = x[..., 0]
    assert torch.equal(codes, codes.round())
    return codes.long(), out["op_target"]


@pytest.mark.parametrize("seed", [0, 1])
def test_op_head_sees_its_clips_frames_in_the_labelled_order(tmp_path, monkeypatch, seed):
    exp, model = samsop_model(tmp_path)
    codes, target = shown_frames(exp, model, monkeypatch, seed)
    clip, frame = codes // T, codes % T
    assert torch.equal(clip, torch.arange(B).unsqueeze(1).expand(B, 4)), "frames from another clip"
    classes, reversed_seen, frame_sets = set(), 0, set()
    for b in range(B):
        f = frame[b].tolist()
        assert len(set(f)) == 4 and all(0 <= t < T for t in f), f
        # the shuffle: shown position k holds the (rank)-th of the 4 frames in time
        order = "".join(str(sorted(f).index(t)) for t in f)
        label = OPN_CLASSES[int(target[b])]
        assert order in (label, label[::-1]), (b, f, order, label)
        classes.add(label)
        reversed_seen += order != label
        frame_sets.add(tuple(sorted(f)))
    # the draw really varies: many classes, both directions, different frames
    assert len(classes) >= 8 and 0 < reversed_seen < B and len(frame_sets) >= 10



def test_total_loss_weights_the_ms_and_op_losses_by_their_own_arguments(tmp_path):
    """--msWeight 2 --opWeight 3: the total loss is CE + 2 MS + 3 OP (models/recipe.py), each loss
    written out here from docs/design.md: the action cross-entropy, the MS head's cross-entropy
    per position and frame (two logits: static, moving), the OP head's over its 12 classes."""
    import types

    import torch.nn.functional as F

    from models.ms_head import MotionSegmentationHead
    from models.op_head import OrderPredictionHead
    args = E.base_parser("ms_op", "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--frameSize", str(FRAME),
         "--seqLen", "2", "--memSize", "8", "--pretrained", "none", "--msWeight", "2", "--opWeight", "3"])
    exp = E.Experiment("ms_op", args, 2, torch.device("cpu"), "fp32", 5, [f"c{i}" for i in range(5)])
    model = types.SimpleNamespace(ms_head=MotionSegmentationHead(4, size=S), op_head=OrderPredictionHead)
    g = torch.Generator().manual_seed(0)
    b, t = 3, 2
    out = {"logits": torch.randn(b, 5, generator=g), "ms_out": torch.randn(b, t, 2, S, S, generator=g),
           "op_logits": torch.randn(b, 12, generator=g), "op_target": torch.tensor([0, 7, 11])}
    batch = {"label": torch.tensor([4, 0, 2]), "mmaps": torch.randint(0, 2, (b, t, S, S), generator=g).float()}

    def nll(logits, target, dim=1):  # -log p(target), logits' classes along `dim`
        return -F.log_softmax(logits, dim).gather(dim, target.unsqueeze(dim)).squeeze(dim)
    ce = nll(out["logits"], batch["label"]).mean()
    ms = nll(out["ms_out"], batch["mmaps"].long(), dim=2).mean()  # over clips, frames and positions
    op = nll(out["op_logits"], out["op_target"]).mean()
    got = exp.losses(model, out, batch)
    assert torch.allclose(got["ce"], ce) and torch.allclose(got["ms_loss"], ms) and torch.allclose(got["op_loss"], op)
    assert torch.allclose(got["loss"], ce + 2 * ms + 3 * op), (got["loss"], ce + 2 * ms + 3 * op)
    assert abs(float(op) - float(ms)) > 0.1  # weights swapped or shared would change the total
