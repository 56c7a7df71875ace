"""VERTE-X on lateral spine radiographs: the paper's recipe.

EfficientNet-B4 on a 1024×512 canvas, global batch 30, Adam with decoupled weight decay
at lr 1e-4 (linear warm-up then cosine decay), gradient clipping, up to 100 epochs with
early stopping on validation AUROC, one model per task (``pvf`` here; ``osteo`` with
``--config.tasks=osteo``, both with ``--config.tasks=pvf,osteo``).

Variants: ``configs/xray.py:demo`` (a small model on a small canvas that learns the
synthetic cohort on a 2-core CPU in minutes); ``configs/xray.py:demo_vertebrae`` (the demo
with the vertebra head); ``configs/xray.py:tiny`` (seconds; tests).
Override any field: ``--config.optim.lr=3e-4 --config.data.manifest=/data/manifest.csv``.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.tasks = "pvf"  # comma-separated: "pvf", "osteo" or "pvf,osteo"

    c.data = dict(
        manifest="",  # CSV (see vertex_jax.data.manifest); empty = built-in synthetic cohort
        domain="xray",
        data_dir="",  # synthetic cohort and cache; default <workdir>/data
        cache_dir="",  # default <data_dir>/cache
        canvas=(1024, 512),
        border_crop=0.05,
        cache_dtype="uint8",
        split_fractions={"train": 0.70, "val": 0.15, "test": 0.15},
        split_seed=0,
        train_split="train",
        val_split="val",
        workers=0,  # 0: thread prefetch (fastest for the raw-canvas cache); N: processes
        skip_unreadable=False,
        clinical_from_dicom=False,  # blank manifest age/sex/bmi from DICOM headers (the CSV wins)
        shared_fs=True,  # multi-host: one process writes cohort/cache, the rest wait
        # Per-vertebra annotations (JSON or CSV, docs/vertebrae.md), read when model.vertebrae
        # is on; empty: the synthetic cohort's annotations.json (none with a manifest).
        # Images without annotations train the image-level tasks only.
        annotations="",
        annotations_complete=True,  # every T4-L4 vertebra an annotated image shows is boxed (False: lesion boxes)
        synthetic=dict(num_patients=2000, scale=0.5, seed=0,
                       options=dict()),  # generate_cohort options (vertex_jax.synthetic.cohort)
    )
    c.augment = dict(enabled=True, max_rotation_deg=30.0, max_scale_delta=0.15, max_noise_std=0.03,
                     flip_prob=0.0,  # left-right mirror (not in the paper's list)
                     clinical_dropout=0.0)  # share of training examples shown without clinical values
    c.model = dict(variant="b4", use_clinical=True, dtype="float32", remat=False,
                   depthwise="auto",  # "conv" (XLA grouped conv), "shifts", auto: shifts on CPU
                   bn_momentum=0.99,  # backbone BatchNorm running statistics (TF reference)
                   # Training-mode BatchNorm: "fused" (hand-written backward, one reduction
                   # pass) or "autodiff", the same function; auto: fused on GPUs, autodiff
                   # on CPUs, the faster on each (docs/performance-notes.md §7).
                   batchnorm="auto",
                   # How the fused BatchNorm's backward pass gets its swish cotangent to its
                   # second pass: "recompute" (computed again there from what that pass reads
                   # anyway: ~13% fewer bytes per GPU step, the same float32 arithmetic;
                   # §15), "float32" (written out and read back) or "compute" (written out in
                   # bfloat16, as op-by-op frameworks do; kept only with
                   # xla_preset=fast-compile-no-excess-precision, §12).
                   batchnorm_grad="recompute",
                   # Squeeze-excite layers as a matrix product ("dot": cuBLAS on GPUs, autotuned
                   # per shape at the first compile) or multiply-and-sum in float32 ("reduce":
                   # XLA's own kernels, 54 fewer autotuning problems for B4; §12).
                   se_dense="dot",
                   # 1x1 convolutions (expand, project, head) as XLA convolutions ("conv":
                   # cuDNN on GPUs) or matrix products ("dot": cuBLAS, whose autotuning at the
                   # first compile the quick-compile preset bounds; 77 fewer GPU kernels for
                   # B4); the same function (§16).
                   pointwise="conv",
                   # Evaluation: the squeeze-excite pool reads the activation ("shared") or
                   # computes it again from the depthwise output ("recompute": a fifth fewer
                   # bytes in B4's evaluation step on GPUs, §14); "auto": recompute on
                   # accelerators, shared on CPUs (where XLA makes it slower).
                   se_pool="auto",
                   # Evaluation: each BatchNorm applied to its convolution's output ("separate")
                   # or folded into the convolution's kernel and a bias ("folded": on GPUs the
                   # projection's convolution, bias and skip become one cuDNN call, §21);
                   # "auto": folded on accelerators, separate on CPUs. Training never folds.
                   fold_bn="auto",
                   # Strided convolutions: "tf" (TF SAME, as the Keras/timm weights were
                   # trained) or "symmetric" ((k-1)/2 each side; no explicit pad on GPUs).
                   padding="tf",
                   # What a block keeps for the backward pass: "none" (everything) or
                   # "elementwise" (convolution outputs and statistics; BatchNorm, swish
                   # and gating recomputed: about half the activation memory, the same
                   # function; docs/performance-notes.md §8). remat=True keeps nothing.
                   recompute="none",
                   # With "elementwise": how many of the 7 stages recompute, from the first
                   # (the high-resolution stages hold most activations; §13).
                   recompute_stages=7,
                   init_weights="",  # Keras .h5 / timm .safetensors ImageNet weights
                   # "gap": global average pool + fusion MLP (the paper's); "evidence": a map of
                   # per-position logits pooled into the score (README, "Localisation").
                   head="gap", evidence_taps="head,stage4", evidence_width=64, pooling="lse",
                   lse_r=1.0,
                   vertebrae=False,  # the vertebra head (docs/vertebrae.md); off in the paper recipe
                   # Its grid, in canvas pixels per cell: at most a third of the vertebral
                   # pitch (about 50 px at 1024×512; docs/vertebrae.md): 32, 16, 8 or 4.
                   vertebra_stride=8,
                   # the head's 3x3 convolutions after its pyramid, one per entry, each with that
                   # dilation (rates above 1 widen the receptive field at the same cost)
                   vertebra_dilations="1,1",
                   # True: the vertebra losses train the head only; the backbone it reads is
                   # trained by the image-level tasks alone (their maps stay where they were).
                   vertebra_detach=False)
    c.loss = dict(vertebrae_weight=1.0)  # the vertebra head's losses, added to the image-level loss
    c.optim = dict(lr=1e-4, weight_decay=1e-4, warmup_epochs=1.0, min_lr_ratio=0.01,
                   clip_norm=1.0, pos_weight=(), grad_accum=1,
                   freeze_stages=0,  # keep the stem + first N backbone stages fixed
                   # Adam's moments as one vector each (optax.flatten): fewer kernels and a
                   # faster compile; auto: on accelerators. Checkpoints keep them per parameter.
                   flatten="auto")
    c.batch_size = 30  # global, over all devices
    c.num_epochs = 100
    c.early_stop_patience = 10  # epochs without a better validation AUROC
    c.eval_batch_size = 30
    c.log_every_steps = 10
    c.checkpoint = dict(keep_latest=2, keep_best=2)
    c.init_from = ""  # checkpoint dir: parameters only, matched by name (fine-tuning)
    c.resume = ""  # checkpoint dir to resume from when the workdir has none
    c.nan_policy = "stop"  # or "skip": drop a step whose loss is not finite
    # Fitted on the best checkpoint's validation outputs when training ends (vertex_jax.calibrate):
    # platt | temperature | isotonic | none. Platt by default: temperature only rescales the
    # logits and cannot move risks that are off by a constant (README, "Calibration").
    c.calibration = "platt"
    c.max_steps = 0  # >0 caps the run (smoke tests, benchmarks)
    # The step takes its state as one buffer per dtype (vertex_jax.train.packing): less host
    # time per dispatch. auto: on accelerators, not on CPUs (slower there; docs/performance-notes.md §7).
    c.pack_state = "auto"
    # The step called from a thread of its own, beside the host's other work per step
    # (vertex_jax.train.dispatch): a lever for the GPU loop, off until measured there.
    c.dispatch_thread = False
    # XLA:GPU flags (vertex_jax.xla_flags; ignored on CPU), set before the backend starts.
    c.xla_preset = "fast-compile"

    if arg in ("demo", "demo_vertebrae"):
        c.tasks = "pvf,osteo"  # both scores from one small model, to show both in minutes
        # The radiographs' own aspect (~1.4), not the paper's 2:1: width sets the scale of an
        # X-ray, so a 2:1 canvas spends a third of its pixels on padding. At the same cost
        # as 384×192 a vertebra is ~15 px tall instead of ~12 (README, "Measured": the demo).
        c.data.canvas = (320, 224)
        # Moderate and severe fractures, mostly severe: a 25% height loss is under 4 px here.
        c.data.synthetic = dict(num_patients=1200, scale=0.25, seed=0,
                                options=dict(grade_probs=(0.0, 0.35, 0.65), cleft_fraction=0.5))
        c.model.variant = "tiny"
        c.model.bn_momentum = 0.9  # a few hundred steps: running statistics must keep up
        # A local evidence head (README, "Localisation"): per-position logits from stage 4
        # (stride 16) and stage 2 (stride 8) only, so no cell sees the whole spine; pVF pooled by
        # log-sum-exp, osteoporosis by the mean. The score then rests on local evidence and
        # HiResCAM points at the fractured body (85% against 65% with `gap`, test AUROC 0.99
        # against 0.93); it learns pVF more slowly, hence 16 epochs instead of 12.
        c.model.head = "evidence"
        c.model.evidence_taps = "stage4,stage2"
        c.model.pooling = "lse,mean"
        c.batch_size = 16
        c.eval_batch_size = 32
        c.num_epochs = 16
        c.early_stop_patience = 5
        c.optim.lr = 3e-3
        c.augment.max_rotation_deg = 5.0
        # Half the training examples without age/sex/BMI: otherwise the small net settles
        # on the clinical shortcut and never learns the fracture (README, "Measured": the demo).
        c.augment.clinical_dropout = 0.5
        if arg == "demo_vertebrae":
            # Per-vertebra findings (docs/vertebrae.md): the vertebral pitch is ~18 canvas
            # pixels here, so the head's grid is stride 4 (stage 1), a third of it. Detached:
            # trained jointly, its losses moved the features the pVF map reads (strict pointing
            # 88% -> 12% at weight 1, 33% at 0.2); detached, the map stays (docs/vertebrae.md).
            c.model.vertebrae = True
            c.model.vertebra_stride = 4
            c.model.vertebra_detach = True
            # Dilation 2 in the second convolution: 7 cells (28 px) see a vertebra and its
            # neighbours' endplates; per-vertebra fracture AUROC 0.917 -> 0.973 at the same cost.
            c.model.vertebra_dilations = "1,2"
    elif arg == "tiny":
        c.data.canvas = (64, 32)
        c.data.synthetic = dict(num_patients=40, scale=0.1, seed=0, options=dict())
        c.model.variant = "tiny"
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_epochs = 2
        c.optim.lr = 1e-3
        c.calibration = "temperature"  # a handful of validation cases: one parameter
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; expected 'demo', 'demo_vertebrae' or 'tiny'")
    return c
