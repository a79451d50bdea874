"""python -m datasets.prepare: the command line of datasets/prepare/prepare.py."""
from datasets.prepare.prepare import main
from utils.errors import run_cli

if __name__ == "__main__":  # a spawned worker imports this file again, as __mp_main__
    run_cli(main)
