"""The README's Python examples run as written and produce sensible values."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    kept = np.asarray(namespace["kept"])
    assert kept.shape == (1,) and 0 < kept[0] < 1
    assert np.isfinite(float(namespace["losses"].total))
    assert namespace["train"].log_probs.shape == (1, 10)
    budget = np.asarray(namespace["search"].budget)
    assert budget.shape == (1,) and 0.05 <= budget[0] <= 1.0
