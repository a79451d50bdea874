"""What the data tools leave in a dataset root, read back without importing them (they sit above
the loaders and utils/): the record datasets.prepare keeps of how each video was prepared, which
the checkpoints carry as `preparation`, and the marker the synthetic generator writes last."""
import json
import os

STATE = ".prepare"  # datasets.prepare's folder in a dataset root: markers, staging, journal, lock
# the settings and findings a marker holds that `preparation` reports
RECORD = ("flow", "warp", "flowScale", "maps", "version", "sourceSize", "outputSize")
BEFORE_V2 = {"flowScale": "output", "maps": "flow", "version": 1}  # what markers without the keys had
SYNTHETIC_MARKER = ".complete"  # datasets.prepare.synthetic writes it last: a JSON object of its settings


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable (a run killed mid-write)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def preparation(root):
    """What datasets.prepare recorded for the dataset at `root`, from its markers: {key: value}
    for RECORD's keys (a sorted list of the values when the videos differ) and "videos"; None
    when nothing there was made by it (the synthetic generator, a release made elsewhere)."""
    seen, videos = {}, set()
    for part in ("flow", "mmaps"):
        base = os.path.join(root, STATE, "done", part)
        for dirpath, _, names in os.walk(base):
            for name in names:
                marker = read_json(os.path.join(dirpath, name)) if name.endswith(".json") else None
                if not isinstance(marker, dict):
                    continue
                videos.add(os.path.relpath(os.path.join(dirpath, name), base))
                for key in RECORD:
                    if key == "flowScale" and part != "flow" or key == "maps" and part != "mmaps":
                        continue
                    value = marker.get(key, BEFORE_V2.get(key))
                    if value is not None:
                        seen.setdefault(key, set()).add(json.dumps(value))
    if not videos:
        return None
    out = {k: [json.loads(v) for v in sorted(seen[k])] for k in RECORD if k in seen}
    out = {k: v[0] if len(v) == 1 else v for k, v in out.items()}
    out["videos"] = len(videos)
    return out


def is_complete(path):
    """Whether the synthetic generator finished the dataset at `path`."""
    return os.path.isfile(os.path.join(path, SYNTHETIC_MARKER))


def is_synthetic(path):
    """Whether the dataset at `path` came from the synthetic generator: its marker, a JSON object
    of the generator's settings, is there (datasets.prepare copies it into what it prepares from
    a synthetic release)."""
    return isinstance(read_json(os.path.join(path, SYNTHETIC_MARKER)), dict)
