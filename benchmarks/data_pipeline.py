"""Benchmark of the data side: SLIC preparation speed and input pipeline throughput.

Measures, on this machine:
  * render and SLIC time per image (one process) at 64^2 and 224^2;
  * preparation of the built-in benchmark (render + SLIC + write, all cores), images/s;
  * the cost of each training-pipeline stage per example (reading what training reads, i.e.
    `data.training_source`: image and mask left encoded; decode + crop + resize + flip;
    drawing the colour-jitter parameters; relabel) and of all of them together, one
    core, for each stored image format (PNG, JPEG: the same images), and of the colour jitter
    + normalisation that the training step applies to the uint8 batch (on this machine's JAX
    device);
  * training pipeline throughput (decode + random resized crop + flip + jitter parameters +
    relabel + batch), images/s, for several grain worker counts;
  * evaluation pipeline throughput.

Usage:
  python benchmarks/data_pipeline.py [--out benchmarks/out/data_pipeline.json]
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.color_jitter import time_jitter  # noqa: E402
from grouped_select import data  # noqa: E402
from grouped_select.data import augment, pipeline, superpixels, synthetic  # noqa: E402


def _time_per_item(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n


def _slic_speed(image_size: int, n: int) -> dict:
    images = []

    def render(i):
        drawn = synthetic.render_example(
            synthetic.example_rng(0, 0, i), label=i % 8, background=i % 8, image_size=image_size
        )
        images.append(drawn["image"])

    render_s = _time_per_item(render, n)
    counts = []

    def slic(i):
        counts.append(int(superpixels.slic_regions(images[i]).max()) + 1)

    slic_s = _time_per_item(slic, n)
    return {
        "image_size": image_size,
        "images": n,
        "render_ms_per_image": 1e3 * render_s,
        "slic_ms_per_image": 1e3 * slic_s,
        "slic_images_per_s_one_core": 1.0 / slic_s,
        "mean_regions": float(np.mean(counts)),
        "max_regions": int(np.max(counts)),
    }


def _throughput(iterator, batch_size: int, batches: int, warmup: int) -> float:
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def _stage_costs(source, image_size: int, n: int = 100, batch_size: int = 64) -> dict:
    """Milliseconds per example of each training-pipeline stage, one core, in order, and of the
    whole per-example work (read + `pipeline._train_map`, as grain runs it); then the colour
    jitter and normalisation that the training step runs on the accelerator (here on this
    machine's default JAX device), per example of a batch."""
    rng = np.random.default_rng(0)
    examples = [source[i % len(source)] for i in range(n)]  # warm the reader
    start = time.perf_counter()
    examples = [source[i % len(source)] for i in range(n)]
    # The image stays encoded (`data.training_source`): it is decoded in the crop stage.
    costs = {"read_ms": 1e3 * (time.perf_counter() - start) / n}

    def stage(name, fn, inputs):
        start = time.perf_counter()
        outputs = [fn(x) for x in inputs]
        costs[f"{name}_ms"] = 1e3 * (time.perf_counter() - start) / n
        return outputs

    def crop(example):
        ids = np.asarray(example["region_ids"])
        height, width = ids.shape
        box = augment.random_resized_crop_box(rng, height, width, scale=(0.08, 1.0))
        flip = rng.random() < 0.5
        return augment.crop_and_resize(example["image"], ids, None, box, image_size, flip=flip)

    views = stage("decode_crop_resize_and_flip", crop, examples)
    params = stage("jitter_parameters", lambda _: data.sample_color_jitter(rng), views)
    num_regions = data.DEFAULT_NUM_REGIONS
    stage("relabel", lambda v: superpixels.limit_regions(v[1], num_regions), views)
    costs["stages_total_ms"] = sum(costs.values())

    train_map = functools.partial(
        pipeline._train_map,
        image_size=image_size,
        num_regions=num_regions,
        crop_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.2),
    )
    start = time.perf_counter()
    for i in range(n):
        train_map(pipeline._train_fields(source[i % len(source)]), rng)
    costs["host_ms_per_example"] = 1e3 * (time.perf_counter() - start) / n

    batch = np.stack([views[i % n][0] for i in range(batch_size)])
    factors, order = (
        np.stack([params[i % n][k] for i in range(batch_size)]) for k in data.JITTER_KEYS
    )
    in_step = time_jitter(batch, factors, order, repeats=5)
    costs["step_jitter_and_normalise_ms"] = in_step["ms_per_image"]
    costs["step_device"] = in_step["device"]
    return costs


def _pipeline_speed(builder, image_size, batch_size, batches, worker_counts) -> list[dict]:
    sources = builder.as_data_source()
    rows = []
    for workers in worker_counts:
        it = data.train_iterator(
            data.training_source(builder),
            global_batch_size=batch_size,
            image_size=image_size,
            num_regions=data.DEFAULT_NUM_REGIONS,
            seed=0,
            worker_count=workers,
        )
        ips = _throughput(it, batch_size, batches, warmup=3)
        if hasattr(it, "close"):
            it.close()
        rows.append({"pipeline": "train", "worker_count": workers, "images_per_s": ips})
        print(f"  train {image_size}px, {workers} workers: {ips:8.1f} images/s", flush=True)
    it = data.eval_iterator(
        sources["test"],
        global_batch_size=batch_size,
        image_size=image_size,
        num_regions=data.DEFAULT_NUM_REGIONS,
    )
    n = min(batches, len(sources["test"]) // batch_size - 1)
    ips = _throughput(it, batch_size, n, warmup=1)
    rows.append({"pipeline": "eval", "worker_count": 0, "images_per_s": ips})
    print(f"  eval  {image_size}px, 0 workers: {ips:8.1f} images/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/out/data_pipeline.json")
    parser.add_argument("--data-dir", default=None, help="tfds data_dir (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--worker-counts", default="0,2")
    parser.add_argument("--slic-images", type=int, default=50)
    parser.add_argument("--stage-examples", type=int, default=300, help="examples per stage")
    parser.add_argument("--num-train-224", type=int, default=512)
    parser.add_argument("--sizes", default="64,224", help="image sizes to measure: 64, 224")
    parser.add_argument(
        "--image-formats", default="png,jpeg", help="stored image formats to measure: png, jpeg"
    )
    args = parser.parse_args()
    formats = args.image_formats.split(",")
    if not set(formats) <= set(data.IMAGE_FORMATS):
        parser.error(f"--image-formats takes {data.IMAGE_FORMATS}, got {args.image_formats}")
    workers = [int(w) for w in args.worker_counts.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    if not set(sizes) <= {64, 224}:
        parser.error(f"--sizes takes 64 and/or 224, got {args.sizes}")

    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_cores_usable": superpixels.default_num_workers(),
        },
        "slic": [],
        "prepare": [],
        "stages": [],
        "pipeline": [],
    }
    print("SLIC and rendering, one process:")
    for size in sizes:
        row = _slic_speed(size, args.slic_images)
        result["slic"].append(row)
        print(
            f"  {size}px: render {row['render_ms_per_image']:.1f} ms, SLIC "
            f"{row['slic_ms_per_image']:.1f} ms/image, {row['mean_regions']:.0f} regions (mean)"
        )

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or tmp
        plan_for_size = {
            64: dict(image_size=64),
            224: dict(
                image_size=224,
                num_train=args.num_train_224,
                num_validation=0,
                num_test=4 * args.batch_size,
            ),
        }
        plans = [{**plan_for_size[size], "image_format": f} for size in sizes for f in formats]
        for plan in plans:
            config = data.shapes_config(**plan)
            fresh = not (pathlib.Path(data_dir) / "p2p_shapes" / config.name).exists()
            start = time.perf_counter()
            builder = data.prepare_shapes(data_dir, **plan)
            seconds = time.perf_counter() - start
            total = sum(len(s) for s in builder.as_data_source().values())
            row = {
                "config": config.name,
                "examples": total,
                "seconds": seconds,
                "fresh": fresh,
                "images_per_s": total / seconds if fresh else None,
                "workers": superpixels.default_num_workers(),
            }
            result["prepare"].append(row)
            print(
                f"prepare {config.name}: {total} examples in {seconds:.1f} s"
                + (f" ({total / seconds:.0f} images/s)" if fresh else " (reused)"),
                flush=True,
            )
            costs = _stage_costs(
                data.training_source(builder),
                plan["image_size"],
                n=args.stage_examples,
                batch_size=args.batch_size,
            )
            labels = {"image_size": plan["image_size"], "image_format": plan["image_format"]}
            result["stages"].append({**labels, **costs})
            print("  per example: " + ", ".join(f"{k} {v}" for k, v in costs.items()))
            for r in _pipeline_speed(
                builder, plan["image_size"], args.batch_size, args.batches, workers
            ):
                result["pipeline"].append({**labels, **r})

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    # Timed as `train/main.py` runs: with transparent huge pages (train/huge_pages.py).
    from train.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
