"""The workbench beside the paper's code: scoring, checks, measurements and the demo, not the method.

    evaluation.py       evaluate.py's work: a checkpoint scored on the test videos with the original's
                        test pipeline, predictions.csv, summary.json, the figures
    verify_original.py  the original Ego-RNN code run next to this one, compared step by step
                        (`python -m tools.verify_original`)
    bench_original.py   the original's stage 2 timed, for `bench.py --compareOriginal`
    replicate_plan.py   replicate.py's cells, what each needs first, and running them
    bench_gpu.sh        the GPU speed check of docs/speed.md
    demo.sh             `make demo`: both stages on the synthetic dataset, then evaluate.py"""
