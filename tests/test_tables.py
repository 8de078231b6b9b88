"""The factor x dim table and the confusion matrix read back from flat keys, as markdown and as
heatmap images (trainer.observe.tables), and their TensorBoard images (LogHook)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.eval import table_keys
from trainer.observe.hooks import log_tables
from trainer.observe.run_log import RunLog
from trainer.observe.tables import (
    confusion_table,
    factor_dim_table,
    figure_size_px,
    heatmap_image,
    markdown,
    save_heatmap,
)

FACTORS = ("shape", "scale", "orientation", "posX", "posY")


def _evaluation(num_continuous: int = 3, num_categories: int = 3) -> dict[str, float]:
    """An interval with every table key (value: a function of its place) and KL / beta."""
    keys = table_keys(["factor_dim_mi"], num_continuous, num_categories)
    values = {key: (i % 10) / 10 for i, key in enumerate(keys) if key.startswith("mi/")}
    shapes = ("square", "ellipse", "heart")
    values |= {
        f"confusion/code{k}/{s}": 10.0 * k + i for k in range(3) for i, s in enumerate(shapes)
    }
    values |= {f"kl/z{j}": 0.5 + j for j in range(num_continuous)}
    values |= {f"beta/z{j}": 0.1 if j < 2 else 10.0 for j in range(num_continuous)}
    return {"loss/total": 1.0, **values}


def test_the_factor_dim_table_is_read_in_factor_and_dim_order():
    interval = {"mi/posY/code": 0.5, "mi/shape/z10": 0.25, "mi/shape/z2": 0.75, "kl/z2": 3.0}
    interval |= {"mi/posY/z2": 0.125, "mi/other/z2": 1.0, "beta/z10": 10.0, "eval/mig": 0.3}
    table = factor_dim_table(interval, "t")
    assert table is not None and table.rows == ["shape", "posY"] + ["other"]
    assert table.columns == ["z2\nKL 3", "z10\nbeta 10", "code"]
    expected = [[0.75, 0.25, np.nan], [0.125, np.nan, 0.5], [1.0, np.nan, np.nan]]
    np.testing.assert_array_equal(table.values_RC, expected)
    assert markdown(table).splitlines() == [
        "| | z2<br>KL 3 | z10<br>beta 10 | code |",
        "|---|---|---|---|",
        "| shape | 0.75 | 0.25 | - |",
        "| posY | 0.12 | - | 0.50 |",
        "| other | 1.00 | - | - |",
    ]
    assert factor_dim_table({"eval/mig": 0.3, "kl/z0": 1.0}) is None


def test_the_confusion_table_is_read_with_the_shapes_in_dataset_order():
    interval = {"confusion/code1/heart": 4.0, "confusion/code0/square": 7.0}
    interval |= {"confusion/code1/ellipse": 2.0, "mi/shape/code": 0.9}
    table = confusion_table(interval)
    assert table is not None and table.rows == ["code0", "code1"]
    assert table.columns == ["square", "ellipse", "heart"]
    np.testing.assert_array_equal(table.values_RC, [[7, 0, 0], [0, 2, 4]])
    assert markdown(table).splitlines()[2:] == ["| code0 | 7 | 0 | 0 |", "| code1 | 0 | 2 | 4 |"]
    assert confusion_table({"mi/shape/z0": 0.1}) is None


@pytest.mark.parametrize("num_continuous", [2, 10])
def test_the_heatmap_has_the_size_it_declares(tmp_path, num_continuous):
    interval = _evaluation(num_continuous)
    for table in (factor_dim_table(interval, "mi"), confusion_table(interval, "codes")):
        assert table is not None
        image_3HW = heatmap_image(table)
        assert tuple(image_3HW.shape) == (3, *figure_size_px(table))
        assert 0.0 <= float(image_3HW.min()) < float(image_3HW.max()) <= 1.0
        save_heatmap(table, tmp_path / "t.png")
        from PIL import Image

        with Image.open(tmp_path / "t.png") as png:
            assert (png.height, png.width) == figure_size_px(table)
    wide = factor_dim_table(_evaluation(10), "mi")
    narrow = factor_dim_table(_evaluation(2), "mi")
    assert wide is not None and narrow is not None
    assert figure_size_px(wide)[1] - figure_size_px(narrow)[1] == 8 * 90  # 0.9 in per column


class _Images:
    def __init__(self) -> None:
        self.images: list = []

    def image(self, tag, step, image):
        self.images.append((tag, step, tuple(image.shape)))


def test_an_evaluation_interval_writes_both_tables_as_images(tmp_path):
    log = _Images()
    log_tables(log, 100, {"loss/total": 1.0})  # no evaluation: nothing drawn
    assert log.images == []
    interval = _evaluation()
    log_tables(log, 200, interval)
    mi, codes = factor_dim_table(interval), confusion_table(interval)
    assert mi is not None and codes is not None
    assert log.images == [
        ("tables/factor_dim_mi", 200, (3, *figure_size_px(mi))),
        ("tables/code_shape", 200, (3, *figure_size_px(codes))),
    ]
    # Through the real run log: TensorBoard holds the two images at their step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_log = RunLog(tmp_path / "run", "name: t\n")
    log_tables(run_log, 200, interval)
    run_log.close()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert set(events.Tags()["images"]) == {"tables/factor_dim_mi", "tables/code_shape"}
    (event,) = events.Images("tables/factor_dim_mi")
    assert (event.step, event.height, event.width) == (200, *figure_size_px(mi))
