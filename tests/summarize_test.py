"""benchmarks/summarize.py: one line per variant, with the ratio to the published code."""

import json

from benchmarks import summarize

H200 = {"device_kind": "NVIDIA H200"}


def test_train_eval_and_pooling_lines_carry_the_ratios_and_errors():
    train = {"benchmark": "train_step", "device": H200,
             "results": {"bfloat16": {"median_ms": 16.0, "images_per_s": 4000.0}}}  # fmt: skip
    (line,) = summarize.summary_lines("t.json", train)
    # 4000 images/s against the reference's 900-1030: 3.9-4.4x.
    assert "bfloat16 [NVIDIA H200]: 16.00 ms, 4,000 images/s, 3.9-4.4x the reference" in line
    assert "MFU" not in line  # no model FLOP count in this result
    counted = {"model_flops_per_step": 3.36e11, "achieved_tflops": 21.0, "mfu_vs_bf16_peak": 0.0212}
    train["results"]["bfloat16"].update(counted)
    (line,) = summarize.summary_lines("t.json", train)
    assert line.endswith("(target 4x), 21.0 TFLOP/s, MFU 2.12 %")
    search = {"benchmark": "eval_dynamic_budget", "device": H200,
              "results": {"bfloat16/grid_chunk5": {"median_ms_per_batch": 19.5,
                                                   "images_per_s": 3282.0}}}  # fmt: skip
    (line,) = summarize.summary_lines("e.json", search)
    assert "19.50 ms" in line and "10.0x the reference (target 10x)" in line
    failed = {"runs/scan256": {"error": "boom"}}
    pooling = {"benchmark": "region_pooling", "device": H200,
               "results": {"pallas_f32": {"median_us": 41.25},
                           "pallas_sums_and_sizes_f32": failed}}  # fmt: skip
    lines = summarize.summary_lines("p.json", pooling)
    assert lines[0] == "p.json: pallas_f32 [NVIDIA H200]: 41.2 µs, target <= 50 µs"
    assert lines[1] == "p.json: pallas_sums_and_sizes_f32/runs/scan256: FAILED boom"


def test_a_folder_of_results(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "jitter.json").write_text(
        json.dumps({"benchmark": "color_jitter", "device": H200, "results": {"median_s": 6.5e-4}})
    )
    (tmp_path / "broken.json").write_text("{")
    summarize.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "jitter.json: color_jitter [NVIDIA H200]: 0.650 ms" in out
    assert "broken.json: unreadable" in out


def test_data_pipeline_rows_name_the_stored_format():
    train = {"pipeline": "train", "worker_count": 16, "images_per_s": 7250.4}
    evaluation = {"pipeline": "eval", "worker_count": 0, "images_per_s": 700.0}
    rows = {"pipeline": [{"image_size": 224, "image_format": "jpeg", **train},
                         {"image_size": 224, **evaluation}]}  # fmt: skip
    lines = summarize.summary_lines("d.json", rows)
    assert lines == [
        "d.json: train pipeline, 16 workers, 224² jpeg (host CPU) [?]: 7,250 images/s",
        "d.json: eval pipeline, 0 workers, 224² (host CPU) [?]: 700 images/s",
    ]
