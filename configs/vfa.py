"""VERTE-X on DXA vertebral fracture assessment (VFA) images: transfer from radiographs.

The paper's rule: start from the X-ray model (``init_from``: backbone and heads, matched
by name), fine-tune on a stratified 30% of the VFA set and test on the other 70%. Here
the 30% is itself split 80:20 into ``finetune`` (trained on) and ``val`` (early stopping,
thresholds), so nothing is chosen on the test 70%. VFA images are tall and narrow
(Hologic mean 1097×378): the fit-inside resize makes their height 1024.

    python -m vertex_jax.main --config=configs/vfa.py --workdir=runs/vfa \\
        --config.init_from=runs/xray

Options: ``--config.optim.freeze_stages=N`` keeps the stem and the first N backbone
stages fixed; ``--config.optim.lr`` (default 3e-5, a third of the X-ray rate).
Variants: ``configs/vfa.py:demo`` fine-tunes ``configs/xray.py:demo`` on the synthetic VFA
domain; ``configs/vfa.py:tiny`` for tests. ``init_from=""`` trains from scratch on the same
split (the comparison the README reports).
"""

from pathlib import Path

import ml_collections

from vertex_jax.config_files import load_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "demo", "tiny"):
        raise ValueError(f"unknown config variant {arg!r}; expected 'demo' or 'tiny'")
    c = load_config(Path(__file__).with_name("xray.py"), arg)  # the X-ray recipe beside this file
    c.data.domain = "vfa"
    c.data.split_fractions = {"finetune": 0.24, "val": 0.06, "test": 0.70}
    c.data.train_split = "finetune"
    c.data.val_split = "val"
    c.data.synthetic.seed = 1  # other patients than the X-ray cohort
    c.data.synthetic.scale = 0.5 if arg != "tiny" else 0.2  # VFA images are small
    c.optim.lr = c.optim.lr / 3
    c.optim.warmup_epochs = 0.5
    c.init_from = ""  # the X-ray run (workdir or checkpoint); empty = from scratch
    if arg == "demo":
        c.data.canvas = (384, 192)  # VFA images are ~2.9:1, so the 2:1 canvas pads the least
        c.data.synthetic.num_patients = 800
        c.num_epochs = 8
    return c
