"""Where the scripts look when an argument is not given, so that the paper's usage line
`python main_ms_op.py --stage 2 --lr 1e-4 --seqLen 16` runs as typed (the original Ego-RNN
scripts had defaults for the dataset folder and the stage-1 model).

--datasetDir, in this order (paths relative to the working directory):
  1. the GTEA61_DIR environment variable;
  2. data/GTEA61, where the README says to put GTEA-61 (either layout);
  3. data/synthetic_gtea61, the synthetic dataset `make demo` generates (said so on a line of its own).
"""
import os
import shlex

from datasets.markers import is_complete
from models.recipe import TEST_USERS, TRAIN_USERS
from utils.checkpoint_record import saved_config
from utils.errors import UserError

ENV_VAR = "GTEA61_DIR"
GTEA61_DIR = os.path.join("data", "GTEA61")
SYNTHETIC_DIR = os.path.join("data", "synthetic_gtea61")  # the Makefile's DEMO_DATA
DEMO_OUT = os.path.join("experiments", "demo_ms_op")      # tools/demo.sh's stage folders


def default_dataset_dir(announce=print):
    """The --datasetDir to use when none is given; `announce` prints which one and why.
    Raises UserError naming all three places when none exists."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not os.path.isdir(env):
            raise UserError(f"{ENV_VAR}={env}: no such folder; point it at a GTEA-61 root, unset it, "
                            f"or pass --datasetDir DIR")
        announce(f"--datasetDir not given: using {env} (from {ENV_VAR})")
        return env
    if os.path.isdir(GTEA61_DIR):
        announce(f"--datasetDir not given: using {GTEA61_DIR}")
        return GTEA61_DIR
    if is_complete(SYNTHETIC_DIR):
        announce(f"--datasetDir not given: using {SYNTHETIC_DIR}, the SYNTHETIC dataset made by `make demo`; "
                 f"results are not GTEA-61 numbers (for GTEA-61: set {ENV_VAR}, put it in {GTEA61_DIR}, "
                 f"or pass --datasetDir)")
        return SYNTHETIC_DIR
    raise UserError(f"no --datasetDir given and no default dataset found: {ENV_VAR} is not set, "
                    f"{GTEA61_DIR} does not exist (in {os.getcwd()}) and neither does {SYNTHETIC_DIR}; "
                    f"pass --datasetDir DIR, put GTEA-61 in {GTEA61_DIR}, or run `make demo` for the "
                    f"synthetic one")


def dataset_suffixed(args, folder):
    """A default experiment folder, with _egtea_split<K> for --dataset egtea (runs on another
    dataset or split never land in, or start from, GTEA-61's folders)."""
    if args.dataset == "egtea":
        return f"{folder}_egtea_split{args.split}"
    return folder


def stage1_command(experiment, args, defaults):
    """The command that trains the stage 1 that `args` (a stage-2 run) looks for; `defaults` are
    the script's default arguments (only settings that differ from them are written out)."""
    cmd = ["python", f"main_{experiment}.py", "--stage", "1", "--seqLen", str(args.seqLen)]
    try:
        implicit_data = args.datasetDir == default_dataset_dir(announce=lambda _: None)
    except UserError:
        implicit_data = False
    if not implicit_data:
        cmd += ["--datasetDir", str(args.datasetDir)]
    if args.outDir != dataset_suffixed(args, f"experiments/main_{experiment}_seq{args.seqLen}"):
        cmd += ["--outDir", str(args.outDir)]
    egtea = args.dataset == "egtea"
    if egtea:  # the split stands for the users
        cmd += ["--dataset", "egtea", "--split", str(args.split)]
    # what changes the stage-1 weights' shapes or meaning
    for name in ((() if egtea else ("trainUsers", "testUsers")) + ("memSize", "frameSize", "pretrained")):
        value, default = getattr(args, name), getattr(defaults, name)
        if default is None:  # the users: GTEA-61's fixed split unless given
            default = list({"trainUsers": TRAIN_USERS, "testUsers": TEST_USERS}[name])
        if value != default:
            cmd += [f"--{name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    if args.noAttention:
        cmd.append("--noAttention")
    return shlex.join(cmd)


def missing_stage1_message(experiment, args, path, defaults):
    """One line for a stage-2 run without its stage-1 checkpoint: what to run, and `make demo`'s
    stage 1 when there is one."""
    msg = (f"stage 2 needs a stage-1 checkpoint and there is none at {path}: run stage 1 first "
           f"(`{stage1_command(experiment, args, defaults)}`) or pass --stage1Dict PATH")
    demo = os.path.join(DEMO_OUT, "stage1", "best_model.pth")
    if os.path.isfile(demo) and os.path.abspath(demo) != os.path.abspath(path) \
            and args.dataset != "egtea":  # the demo's stage 1 is GTEA-61-form
        held = os.path.exists(os.path.join(DEMO_OUT, "stage2"))
        msg += (f"; `make demo`'s stage 1 (synthetic data) exists: --stage1Dict {demo} uses it, and so does "
                f"--outDir {DEMO_OUT}" + (" (with --overwrite: its stage 2 holds the demo's results)" if held else "")
                + _demo_settings(demo))
    return msg


def _demo_settings(path):
    """The settings a stage 2 must share with the demo's stage 1 (utils/checkpoint_record.py checks them)."""
    try:
        c = saved_config(path)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded
        return ""
    keys = [k for k in ("seqLen", "frameSize", "memSize") if c.get(k) is not None]
    return (", with the same " + " ".join(f"--{k} {c[k]}" for k in keys)) if keys else ""
