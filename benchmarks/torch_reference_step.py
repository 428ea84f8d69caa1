"""Our training step and evaluation beside PyTorch re-creations of the reference's, in one process.

    # PyTorch is not a dependency of this project; a venv of its own (Python 3.11 here):
    #   python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision
    /tmp/torchvenv/bin/python benchmarks/torch_reference_step.py \
        --jax-site-packages .venv/lib/python3.11/site-packages [--what train,eval --rounds 8]

The spec's CPU figures for the published code (4.5-6 images/s training at batch 4) were
measured on some 2-core CPU; these shared machines differ by ~2x (`RESULTS.md`). This script
measures a ratio on the machine at hand instead: the published code is not in this workplace,
so its step is re-created here from `P2P_SPEC.md` with the libraries it uses, in float32,
eager, as published:

- selector: torchvision's LR-ASPP MobileNetV3-Large (dilated), its two 1x1 classifier heads
  40 -> 4 and 128 -> 4 with the budget τ added to their inputs, the sum upsampled
  (bilinear, align_corners=False) to the image;
- region means with `scatter_reduce` (K regions), Σ = E Eᵀ per image, sampled through a
  Cholesky factor after the diagonal jitter loop (1e-6, x10 until it succeeds), a relaxed
  Bernoulli at temperature 1, each pixel masked by its region's value (black elsewhere);
- classifier: torchvision's VisionTransformer with ViT-Ti/16's shape (12 layers, 3 heads,
  width 192, MLP 768), 9 classes;
- loss: cross-entropy + the "kl" sparsity term on p̄ + λ₂ mean |Σ|; Adam (lr 1e-4) on both.

The evaluation re-creation runs the dynamic-budget search as the spec describes it (no
gradient, eval mode): the backbone once, then for τ = 0.05, 0.10, ..., 1 the heads, the region
means, the hard mask and the classifier; with random weights no image is ever confident, so
all 20 classifier passes run (the reference's measured "untrained" case). Ours is
`benchmarks/eval_search.py`'s batched grid, `--grid-chunk` budgets per classifier batch
(default 5, as `config.p2p.budget_chunk`; against one at a time, batch 4 on the 2-core Xeon:
0.88x the time with bfloat16 products, 0.95x in float32).

The training re-creation leaves out what the reference does outside its step (host-side colour
jitter, and SLIC after every augmentation) and so is, if anything, faster than the published
step; ours includes the colour jitter and normalisation. Both steps see random images,
region ids and labels of the same shapes, one after the other (rounds alternate which goes
first), with `torch.set_num_threads` at the host's core count.

The JAX side is `benchmarks/train_step.py`'s compiled paper step (ImageNet-9 config,
float32), once as is ("ours") and once with `config.model.matmul_precision="bfloat16"`
("ours_bfloat16_matmuls": the products' operands rounded to bfloat16, float32 sums; the
reference itself cannot run in bfloat16, P2P_SPEC.md). jax and the project are imported
from `--jax-site-packages` (the project's venv), so both frameworks run in one process under
the same glibc tunables (`train/huge_pages.py`).
"""

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jax-site-packages", required=True, help="site-packages with jax")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--what", default="train,eval", help="train and/or eval")
    parser.add_argument("--rounds", type=int, default=8, help="alternating samples of each")
    parser.add_argument("--inner", type=int, default=3, help="steps per sample")
    parser.add_argument(
        "--matmul-precisions",
        default="default,bfloat16",
        help="ours with each of these config.model.matmul_precision values (bfloat16: rounded "
        "operands, float32 sums)",
    )
    parser.add_argument(
        "--grid-chunk",
        type=int,
        default=5,
        help="our search's budgets per classifier batch (0: all 20 at once)",
    )
    parser.add_argument("--out", help="default: benchmarks/out/torch_reference_step.json")
    return parser.parse_args()


def _torch_reference(batch: int, size: int, num_regions: int, num_classes: int = 9):
    """The re-created models and a random batch, shared by the step and the search.

    Returns:
      dict: backbone, head (LR-ASPP's), classifier (ViT-Ti shape); images [B, 3, H, W];
      region_ids [B, H*W]; sizes [B, K] region pixel counts; black [1, 3, 1, 1], the
      normalised value of a black pixel.
    """
    import torch
    from torchvision.models import VisionTransformer
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    segmentation = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    region_ids = torch.randint(0, num_regions, (batch, size * size))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return {
        "backbone": segmentation.backbone,
        "head": segmentation.classifier,
        "classifier": VisionTransformer(
            image_size=size,
            patch_size=16,
            num_layers=12,
            num_heads=3,
            hidden_dim=192,
            mlp_dim=768,
            num_classes=num_classes,
        ),  # fmt: skip
        "images": torch.randn(batch, 3, size, size),
        "region_ids": region_ids,
        "sizes": torch.zeros(batch, num_regions).scatter_add_(
            1, region_ids, torch.ones(batch, size * size)
        ),
        "black": ((0 - mean) / std).view(1, 3, 1, 1),
    }


def _head_context(head, low, high):
    """LR-ASPP's gated 960 -> 128 features upsampled to the low features' size (τ-free)."""
    import torch.nn.functional as F

    y = head.cbr(high) * head.scale(high)
    return F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)


def _pixel_outputs(head, low, context, tau, size: int):
    """P2P's two heads with the budget τ added to their inputs, upsampled to the image:
    [B, 4, H, W]."""
    import torch.nn.functional as F

    out = head.low_classifier(low + tau) + head.high_classifier(context + tau)
    return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)


def torch_reference_step(batch: int, size: int, num_regions: int, num_classes: int = 9):
    """The re-created reference step (module docstring) on random data: a no-argument
    callable that runs one step and returns its loss."""
    import torch
    import torch.nn.functional as F

    parts = _torch_reference(batch, size, num_regions, num_classes)
    backbone, head, classifier = parts["backbone"], parts["head"], parts["classifier"]
    images, region_ids, sizes, black = (
        parts[k] for k in ("images", "region_ids", "sizes", "black")
    )
    modules = torch.nn.ModuleList([backbone, head, classifier]).train()
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-4)
    labels = torch.randint(0, num_classes, (batch,))
    budget = torch.rand(batch) * 0.95 + 0.05

    def sample_mask(mu, embedding):
        sigma = embedding @ embedding.transpose(1, 2)  # [B, K, K], rank <= 3
        jitter, eye = 1e-6, torch.eye(num_regions)
        while True:
            factor, info = torch.linalg.cholesky_ex(sigma + jitter * eye)
            if not bool(info.any()):
                break
            jitter *= 10
        logits = mu + (factor @ torch.randn(batch, num_regions, 1)).squeeze(-1)
        u = torch.rand(batch, num_regions).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid(logits + torch.log(u) - torch.log1p(-u)), sigma

    def step():
        optimizer.zero_grad(set_to_none=True)
        features = backbone(images)
        low, high = features["low"], features["high"]
        context = _head_context(head, low, high)
        pixels = _pixel_outputs(head, low, context, budget.view(-1, 1, 1, 1), size).flatten(2)
        sums = torch.zeros(batch, 4, num_regions).scatter_reduce(
            2, region_ids.unsqueeze(1).expand(-1, 4, -1), pixels, reduce="sum", include_self=False
        )
        means = sums / sizes.clamp(min=1).unsqueeze(1)
        mu, embedding = means[:, 0], means[:, 1:].transpose(1, 2)
        region_mask, sigma = sample_mask(mu, embedding)
        pixel_mask = torch.gather(region_mask, 1, region_ids).view(batch, 1, size, size)
        logits = classifier(images * pixel_mask + black * (1 - pixel_mask))
        kept = (torch.sigmoid(mu) * sizes).sum(1) / (size * size)
        slack = 1 - budget + 1e-6
        sparsity = -torch.log(slack - torch.relu(kept - budget)) + torch.log(slack)
        loss = F.cross_entropy(logits, labels) + 10 * sparsity.mean()
        loss = loss + 0.01 * sigma.abs().mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def torch_reference_search(batch: int, size: int, num_regions: int, certainty: float = 0.9):
    """The re-created reference evaluation (dynamic budget, untrained weights, so every image
    takes all 20 classifier passes): a no-argument callable returning the budgets."""
    import torch

    parts = _torch_reference(batch, size, num_regions)
    backbone, head = parts["backbone"].eval(), parts["head"].eval()
    classifier = parts["classifier"].eval()
    images, region_ids, sizes, black = (
        parts[k] for k in ("images", "region_ids", "sizes", "black")
    )

    @torch.no_grad()
    def search():
        features = backbone(images)  # once; only the heads re-run per budget
        low = features["low"]
        context = _head_context(head, low, features["high"])
        chosen = torch.ones(batch)
        done = torch.zeros(batch, dtype=torch.bool)
        tau = 0.0
        for _ in range(20):
            tau += 0.05
            out = _pixel_outputs(head, low, context, tau, size)
            logit_sums = torch.zeros(batch, num_regions).scatter_reduce(
                1, region_ids, out[:, 0].reshape(batch, -1), reduce="sum", include_self=False
            )
            keep = (torch.sigmoid(logit_sums / sizes.clamp(min=1)) > 0.5).float()
            mask = torch.gather(keep, 1, region_ids).view(batch, 1, size, size)
            probs = torch.softmax(classifier(images * mask + black * (1 - mask)), -1)
            confident = (probs.max(-1).values >= certainty) & ~done
            chosen = torch.where(confident, torch.tensor(min(tau, 1.0)), chosen)
            done |= confident
        return chosen

    return search


def jax_search(
    batch: int, size: int, matmul_precision: str = "default", grid_chunk: int | None = 5
):
    """Our dynamic-budget search (`benchmarks/eval_search.py`'s batched grid, `grid_chunk`
    budgets per classifier batch, float32, δ 0.9): a no-argument callable returning the
    budgets."""
    import jax

    from benchmarks import eval_search

    args = argparse.Namespace(
        config="imagenet9",
        size=size,
        batch=batch,
        certainty=0.9,
        matmul_precision=matmul_precision,
    )
    searcher, params, x, ids = eval_search.search_setup(args, "float32")
    compiled = searcher("grid", grid_chunk).lower(params, x, ids).compile()
    return lambda: jax.block_until_ready(compiled(params, x, ids)[0])


def jax_step(batch: int, size: int, matmul_precision: str = "default"):
    """Our compiled paper step (`benchmarks/train_step.py`), float32 (parameters, activations
    and, with `matmul_precision` "default", the products): a no-argument callable."""
    import jax

    from benchmarks import train_step

    args = argparse.Namespace(
        config="imagenet9", size=size, batch=batch, matmul_precision=matmul_precision
    )
    compiled, state, inputs = train_step.compiled_step(args, "float32")
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], inputs)
        return float(jax.block_until_ready(metrics["loss"]))

    return step


def _seconds_per_step(step, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - start) / inner


def main() -> None:
    args = _parse()
    sys.path.insert(0, str(ROOT))
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    sys.path.append(args.jax_site_packages)
    import os

    # libgomp's threads spin for a while after each of torch's parallel regions; alternating
    # with XLA's thread pool on two cores, that spinning took CPU from our step (861 ms with
    # it, 767 without, same session); torch's own step was no slower without it (707, 660).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads libgomp
    import torch

    torch.set_num_threads(os.cpu_count())
    from benchmarks.common import device_info, write_json

    builders = {
        "train": (
            lambda: torch_reference_step(args.batch, args.size, args.regions),
            lambda precision: jax_step(args.batch, args.size, precision),
        ),
        "eval": (
            lambda: torch_reference_search(args.batch, args.size, args.regions),
            lambda precision: jax_search(args.batch, args.size, precision, args.grid_chunk or None),
        ),
    }
    # "ours" is the float32 step; "ours_bfloat16_matmuls" rounds its products' operands.
    names = {"default": "ours", "bfloat16": "ours_bfloat16_matmuls"}
    precisions = args.matmul_precisions.split(",")
    result = {
        "benchmark": "torch_reference_step",
        "device": {**device_info(), "torch": torch.__version__},
        "batch": args.batch,
        "image_size": args.size,
        "num_regions": args.regions,
        "dtype": "float32",
        "matmul_precisions": {names[p]: p for p in precisions},
        "grid_chunk": args.grid_chunk or None,
        "rounds": args.rounds,
        "calls_per_sample": args.inner,
    }
    for what in args.what.split(","):
        reference, ours = builders[what]
        calls = {"torch_reference": reference()}
        calls.update({names[p]: ours(p) for p in precisions})
        result[what] = _side_by_side(calls, args)
        for name, row in result[what]["results"].items():
            print(f"{what} {name:22s} {row['median_ms']:8.1f} ms  {row['images_per_s']:6.2f} img/s")
        for name, speedup in result[what]["speedup_median"].items():
            print(f"{what}: {name} vs the re-created reference {speedup:.2f}x")
    write_json(result, args.out, "torch_reference_step.json")


def _side_by_side(calls: dict, args: argparse.Namespace) -> dict:
    """Alternates the callables (rounds reverse their order); per-call times and, for each of
    ours, the per-round speed ratio to "torch_reference"."""
    for call in calls.values():  # warm-up: compilation, allocator, oneDNN primitives
        for _ in range(3):
            call()
    samples = {name: [] for name in calls}
    for round_index in range(args.rounds):
        order = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for name in order:
            samples[name].append(_seconds_per_step(calls[name], args.inner))
    reference = samples["torch_reference"]
    ratios = {
        name: [t / o for t, o in zip(reference, times, strict=True)]
        for name, times in samples.items()
        if name != "torch_reference"
    }
    return {
        "results": {
            name: {
                "median_ms": 1e3 * statistics.median(times),
                "min_ms": 1e3 * min(times),
                "max_ms": 1e3 * max(times),
                "images_per_s": args.batch / statistics.median(times),
                "samples_ms": [1e3 * t for t in times],
            }
            for name, times in samples.items()
        },
        "speedup_per_round": ratios,
        "speedup_median": {name: statistics.median(r) for name, r in ratios.items()},
    }


if __name__ == "__main__":
    main()
