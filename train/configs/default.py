"""Default configuration: P2P on the built-in benchmark with CPU-sized backbones.

Every key the program reads is listed here with its default; the paper configs start from
this one and override. Override any key from the command line, e.g.
`python train/main.py --config.optim.num_epochs=3 --config.p2p.dynamic_budget=False`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default configuration (locked by `config_flags`)."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Data. `name`: "builtin" (generated offline), "folders" (the user's files in a published
    # layout: `layout`, `root`) or "tfds" (a prepared tensorflow-datasets dataset: `tfds_name`,
    # `root` = its data_dir, "" for tfds' default).
    data = config.data = ml_collections.ConfigDict()
    data.name = "builtin"
    data.data_dir = ""  # prepared datasets ("": $P2P_DATA_DIR or ~/.cache/grouped_select)
    data.root = ""
    data.layout = ""  # folders: imagenet, imagenet9, bam_object, bam_scene, coco10, folders
    data.mask_pairing = "stem"  # folders: mask per image by file stem, or "sorted" (BAM)
    data.crop_to_mask = False  # folders: crop images to their mask's size (BAM's layout)
    data.tfds_name = ""  # tfds: e.g. "cifar10", "imagenette", "oxford_iiit_pet"
    data.train_split = "train"
    data.eval_split = "test"
    data.num_classes = 0  # 0: from the dataset
    data.image_size = 32  # what the networks see (the built-in images are 64x64)
    data.num_regions = 128  # static region bound K (SLIC returns about slic_segments regions)
    data.slic_segments = 100
    data.slic_compactness = 20.0
    # Stored images: "png" (lossless) or "jpeg" (quality 95, 4:4:4: ~2.4x faster to decode,
    # for datasets read from disk every epoch; grouped_select/data/tfds_common.py).
    data.image_format = "png"
    data.crop_scale = (0.7, 1.0)  # random resized crop area range (small crops cut the shape)
    data.hflip = True
    # (brightness, contrast, saturation, hue); () off: the built-in shapes have random colours.
    data.color_jitter = ()
    data.eval_crop_fraction = 1.0  # resize to image_size / f, centre crop (0.875: ImageNet)
    data.worker_count = 0  # grain worker processes (0: threads in this process)
    data.read_threads = 2
    # Decode the training split into memory once (small datasets; the paper configs turn it
    # off): reading + decoding costs more CPU than augmenting, and on 2 cores it slows the step.
    data.cache_in_memory = True
    # The built-in benchmark (`grouped_select.data.synthetic`): train images put each class on
    # its own background family with probability `background_correlation`; test never does.
    builtin = data.builtin = ml_collections.ConfigDict()
    builtin.source_size = 64  # generated image side (224 for paper-like runs)
    # 15,000: with 5,000 the classifier overfits (black box: 0.906 -> 0.925 test accuracy).
    builtin.num_train = 15000
    builtin.num_validation = 500
    builtin.num_test = 1000
    # 0.0: at 0.8 the small networks learn the background instead of the shape (chance on test).
    builtin.background_correlation = 0.0
    builtin.seed = 0

    # Networks. selector: "small" or "lraspp_mobilenet_v3_large"; classifier: "small_cnn",
    # "small_vit", "vit_ti", "vit_s", "vit_b", "resnet18", "resnet34".
    model = config.model = ml_collections.ConfigDict()
    # "p2p", or "black_box": the classifier alone on full images (the baseline; no selector).
    model.kind = "p2p"
    model.selector = "small"
    model.selector_stride = 2  # "small" selector: stride of its feature maps (2, 4 or 8)
    model.classifier = "small_cnn"
    # "small_cnn": channels and stride of each stage (strides (): 2 everywhere). A first stage
    # at full resolution sees the thin parts of 32² shapes: black box 0.925 -> 0.957.
    model.classifier_widths = (16, 32, 64, 128)
    model.classifier_strides = (1, 2, 2, 2)
    model.num_outputs = 4  # 1 keep-logit + 3 embedding dims
    model.patch_size = 8  # ViT classifiers
    # ViT classifiers: the encoder blocks as one lax.scan (faster on CPU, one block to
    # compile); False runs them as a Python loop. Same parameters either way.
    model.scan_layers = True
    # Region pooling: "segment_sum", "one_hot", "pallas" or "pallas_runs" (NVIDIA GPUs; see
    # grouped_select/pallas_pooling.py) or "auto" (one_hot on TPU, segment_sum elsewhere).
    model.pool_method = "auto"
    # ViT-Ti/S/B attention: "xla", or "cudnn" (cuDNN's fused attention; NVIDIA GPUs with
    # compute_dtype bfloat16 only).
    model.attention = "xla"
    # ViT-Ti/S/B: recompute each block's forward pass in the backward pass instead of keeping
    # its activations (jax.checkpoint); less memory traffic, more arithmetic, same results.
    model.remat_layers = False
    # ViT-Ti/S/B blocks: LayerNorms, bias adds, GELU and residual adds as "xla" compiles them,
    # or "pallas": LN1 + query/key/value projections and LN2 + MLP + residual as two fused
    # kernels (NVIDIA GPUs; the MLP's hidden activations never go to memory). Same parameters.
    model.block_kernels = "xla"
    # MobileNet selector's depthwise convs: "conv" (XLA's grouped convolution), "shifted_sum"
    # (k² shifted slices, hand-written gradient) or "auto" (shifted_sum on CPU and GPU, where
    # it measured fastest; conv on TPU). Same parameters and results; only the speed differs
    # (benchmarks/RESULTS.md).
    model.depthwise_method = "auto"
    # The ViTs' (small_vit, ViT-Ti/S/B) and MobileNet selector's matrix products (linear
    # layers, attention, 1x1 convs; the CNNs have none and keep their convolutions):
    # "default" (in the compute dtype), or "bfloat16": operands rounded to bfloat16, sums in
    # float32, activations left in the compute dtype (as a TPU computes float32 products at
    # JAX's default precision). On a CPU with AMX these products run ~4x faster
    # (grouped_select/backbones/matmul.py, benchmarks/RESULTS.md).
    model.matmul_precision = "default"

    # The P2P method.
    p2p = config.p2p = ml_collections.ConfigDict()
    p2p.dynamic_budget = True  # False: the fixed-budget variant (τ = fixed_budget)
    p2p.fixed_budget = 0.2
    # "superpixels" (SLIC ids), or "pixels": every pixel its own region, K = image_size² (the
    # paper's pixel-level ablation; data.num_regions is then unused).
    p2p.regions = "superpixels"
    p2p.min_budget = 0.05  # training samples τ ~ U(min_budget, 1)
    p2p.sparsity = "kl"  # "kl" or "l1"
    # λ₁. The paper's 10 (train/configs/paper.py); 20 on the built-in benchmark, where it
    # drops more background: δ = 0.9 mask precision 0.674 -> 0.758 at about the same accuracy.
    p2p.sparsity_weight = 20.0
    p2p.anneal_sparsity = True
    # Epochs with λ₁ = 0 before the λ₁ and temperature schedules start (they then run over
    # the remaining epochs; capped at num_epochs - 1); 0 is the paper's schedule. The built-in
    # run needs it: the small classifier must learn shapes before sparsity starts, else the
    # selector (Adam follows the consistent sparsity gradient) drops everything.
    p2p.sparsity_warmup_epochs = 3
    p2p.covariance_weight = 0.01  # λ₂
    # Binary-concrete temperature at the end of annealing. The paper's 0.5 (paper.py); 0.4 on
    # the built-in benchmark: training masks closer to the hard masks evaluation uses. With 26
    # epochs, δ = 0.9 accuracy 0.892-0.913 over four runs (0.888-0.907 at 0.5); 0.3 and 0.2
    # gain as much but lose mask precision (0.758, 0.751). README: "How we got here".
    p2p.final_temperature = 0.4
    p2p.num_samples = 1  # Monte-Carlo masks per image
    p2p.straight_through = False
    p2p.jitter = 1e-6
    p2p.certainties = (0.8, 0.9, 0.95, 0.99)  # δ values evaluated with the dynamic budget
    p2p.budget_step = 0.05
    # Budgets per classifier batch in the search (0: all 20 at once; memory grows with it:
    # batch x chunk images). Time against one at a time, batch 4 at 224² on the 2-core Xeon:
    # 0.88x with bfloat16 products, 0.95x in float32 (all 20 at once: 1.14x, 1.12x); on an
    # H200 (batch 64): 0.89x.
    p2p.budget_chunk = 5

    # Optimisation.
    optim = config.optim = ml_collections.ConfigDict()
    optim.learning_rate = 1e-3
    # "constant"; "cosine": decays to 0 over the run; "stable_decay": constant, then linearly
    # to 0 over the last `decay_fraction` of the steps.
    optim.schedule = "stable_decay"
    optim.decay_fraction = 0.25
    optim.batch_size = 64  # global, over all processes
    optim.num_epochs = 26
    optim.steps_per_epoch = 0  # 0: dataset size // batch_size
    optim.weight_decay = 0.0
    optim.grad_clip_norm = 0.0  # 0: no clipping

    config.compute_dtype = "float32"  # or "bfloat16" (parameters stay float32)
    config.eval_every_epochs = 12
    config.eval_batch_size = 128
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 3
    # Start: the workdir's latest checkpoint, else `resume` (a run's checkpoint folder), else
    # `model_init` (converted weights, `python -m grouped_select.convert`), else random.
    config.resume = ""
    config.model_init = ""
    config.replace_classifier_head = True  # model_init: new head if the class count differs
    config.max_steps = 0  # >0: stop after this many steps (smoke tests)
    config.progress_bar = True
    return config
