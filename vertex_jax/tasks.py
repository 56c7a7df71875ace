"""The prediction tasks and the image domains: their names, in the order of every task column
(labels, logits, scores).

``pvf``: prevalent vertebral fracture; ``osteo``: osteoporosis (T-score <= -2.5). Plain
Python, so every part of the package (the manifest, the network, the score table, the
serving path without JAX) takes the names from here.
"""

from __future__ import annotations

TASKS = ("pvf", "osteo")
# ``xray``: lateral spine radiographs; ``vfa``: DXA vertebral fracture assessment images.
DOMAINS = ("xray", "vfa")
