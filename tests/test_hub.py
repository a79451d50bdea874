"""hubconf.py through torch.hub.load(repo, entry, source="local"): a SAMSOP-Net checkpoint of this
project and an original Ego-RNN RGB file each give a model with the saved weights, whose logits
are those of the model that was saved; a checkpoint of another experiment is refused. No network."""
import os

import pytest
import torch

from tests.test_models import _original_rgb_state, _randomise_bn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:pretrained=.none.")


def hub(entry, **kwargs):
    return torch.hub.load(ROOT, entry, source="local", trust_repo=True, **kwargs)


def test_samsop_net_from_a_checkpoint_of_this_project(tmp_path):
    from models import SAMSOPNet
    torch.manual_seed(0)
    # as main_ms_op.py stage 2 writes it: 3 classes, ConvLSTM of 16, 64 px frames (2 x 2 maps)
    saved = SAMSOPNet(3, mem_size=16, ms="classification", op=True, ms_size=2, pretrained="none").eval()
    _randomise_bn(saved.egornn)
    path = tmp_path / "best_model.pth"
    torch.save({"model": saved.state_dict(), "experiment": "ms_op", "family": "rgb", "num_classes": 3,
                "classes": ["a", "b", "c"], "frameSize": 64, "seqLen": 4, "stackSize": 5,
                "model_config": {"attention": True, "memSize": 16, "ms": "classification", "msInput": "attention",
                                 "op": True, "opInput": "flat"}}, path)
    model = hub("samsop_net", checkpoint=str(path))
    assert not model.training and model.classes == ["a", "b", "c"]
    assert model.ms_head is not None and model.op_head is not None
    got, want = model.state_dict(), saved.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    clips = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(clips, heads=False)["logits"], saved(clips, heads=False)["logits"])
    # another experiment's entry point is refused, naming the right one
    with pytest.raises(ValueError, match="'samsop_net'"):
        hub("ego_rnn", checkpoint=str(path))
    with pytest.raises(ValueError, match="ms_op"):
        hub("ego_rnn_flow", checkpoint=str(path))


def test_ego_rnn_from_an_original_release_file(tmp_path):
    from models import EgoRNN
    torch.manual_seed(1)
    saved = EgoRNN(3, mem_size=16, pretrained="none").eval()
    _randomise_bn(saved)
    path = tmp_path / "best_model_state_dict_rgb_split2.pth"
    torch.save(_original_rgb_state(saved), path)  # the original's key names, no record
    clips = torch.randn(1, 3, 3, 224, 224)
    with torch.no_grad():
        want = saved(clips)["logits"]
        for entry in ("ego_rnn", "samsop_net"):  # an Ego-RNN file is SAMSOP-Net without its heads
            model = hub(entry, checkpoint=str(path))
            assert model.classes == [] and model.ms_head is None and model.op_head is None
            assert torch.allclose(model(clips)["logits"], want, atol=1e-6, rtol=1e-5)


def test_untrained_models_take_their_shape_from_the_arguments():
    model = hub("samsop_net", num_classes=7, frameSize=112)
    assert model.num_classes == 7 and model.op_head is not None
    assert model.op_head.fc6[0].in_features == 512 * 4 * 4  # 112 px: 4 x 4 layer4 maps, flattened
    assert hub("ego_rnn_flow", num_classes=5).num_classes == 5
