"""Checkpoints written by earlier versions of this code keep loading and keep their logits.

tests/data/checkpoint_format.json was recorded once, by the code of commit cbc8671 (before the
recipe moved to models/recipe.py): for a SAMSOP-Net stage-2 checkpoint (MS + OP heads) and a
flow checkpoint, the metadata each file carried, its state-dict keys and shapes, and the logits
(MS maps, OP logits) that code gave on a fixed input for weights made from the keys alone by a
seeded rule. The test remakes that file from the record with the same rule (no model code
involved), loads it into a model built from the file's own configuration by today's code, and
compares the outputs (fp32; a tolerance, since the record may come from another CPU kind)."""
import json
import math
import os

import pytest
import torch

from models.checkpoints import load_checkpoint
from models.recipe import build_from_checkpoint, forward

RECORD = os.path.join(os.path.dirname(__file__), "data", "checkpoint_format.json")


def weights_from_keys(keys_shapes, seed):
    """The recording's rule: a value for every key, from its name and shape and a seed."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys_shapes:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = 1 + 0.1 * torch.rand(shape, generator=g)
        elif k.endswith("running_mean") or k.endswith("bias"):
            state[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BatchNorm weight
            state[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[k] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return state


@pytest.mark.parametrize("name", ["ms_op_stage2", "flow"])
def test_checkpoint_of_the_earlier_code_gives_its_outputs(name, tmp_path):
    rec = json.load(open(RECORD))[name]
    path = tmp_path / f"{name}.pth"
    torch.save({"model": weights_from_keys(rec["keys"], rec["weights_seed"]), **rec["meta"]}, path)

    model = build_from_checkpoint(str(path))
    assert sorted(model.state_dict()) == sorted(k for k, _ in rec["keys"])  # the same state-dict keys
    load_checkpoint(model, str(path))
    model.eval()
    x = torch.randn(rec["input_shape"], generator=torch.Generator().manual_seed(rec["input_seed"]))
    family = rec["meta"]["family"]
    batch = {"flow": x} if family == "flow" else {
        "rgb": x, "frame_numbers": torch.arange(x.shape[1]).repeat(x.shape[0], 1) + 1}
    with torch.no_grad():
        out = forward(model, batch, family, heads=True,
                      generator=torch.Generator().manual_seed(rec["op_seed"]))
    torch.testing.assert_close(out["logits"], torch.tensor(rec["logits"]), rtol=1e-4, atol=1e-5)
    if "op_logits" in rec:
        torch.testing.assert_close(out["op_logits"], torch.tensor(rec["op_logits"]), rtol=1e-4, atol=1e-5)
        assert out["ms_out"].abs().sum().item() == pytest.approx(rec["ms_out_sum_abs"], rel=1e-4)
