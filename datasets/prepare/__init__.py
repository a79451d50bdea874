"""The data workshop: tools that make what the loaders (datasets/*.py) read, run once per dataset.

    prepare.py      videos or a release -> frames, warp flow and motion maps (`python -m datasets.prepare`)
    video.py        decoding and writing videos (PyAV)
    warpflow.py     optical flow, camera compensation, the flow encoding and motion maps
    trajectories.py trajectory motion maps (`--maps idt`)
    gtea61raw.py    the raw GTEA-61 release cut into instances (`--gtea61`)
    quality.py      how prepared flow and maps compare (`python -m datasets.prepare.quality`)
    synthetic.py    a small synthetic GTEA-61 in every layout (`python -m datasets.prepare.synthetic`)
    long_video.py   a long synthetic video of several actions (`python -m datasets.prepare.long_video`)

The loaders never import these; what they read back of a tool's output is in datasets/markers.py."""
