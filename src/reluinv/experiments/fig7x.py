"""Figure 7x (beyond the paper): the source/target pairs of Figure 7, now keeping the features of
deeper layers of the Table 1 MLP identical (layers 1, 2, 5 and the logits), in "region" mode and
in "exact" mode where it finishes within the time limit, with the largest distance an input can
move while keeping the features (:func:`reluinv.invariance.preimage_extent`)."""

from __future__ import annotations

from typing import Any

from ..invariance import fig7x_examples
from .common import RunConfig, digit_data, trained


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set = digit_data(config)
    model, info = trained("mlp_table1", train_set, test_set, config)
    result = fig7x_examples(model, test_set.images, test_set.labels,
                            depths=(1, 2, 5, "logits"), modes=("region", "exact"),
                            n_examples=config.samples(1, 3),
                            time_limit=5.0 if config.quick else 300.0)
    rows = []
    for example in result["examples"]:
        for depth in example["depths"]:
            for mode, search in depth["searches"].items():
                rows.append({"example": example["index"], "source_label": example["label"],
                             "target_label": example["target_label"], "depth": depth["depth"],
                             "mode": mode, "feature_max_abs_diff": search["feature_max_abs_diff"],
                             "input_l2_distance": search["input_l2_distance"],
                             "proven": search["proven"], "status": search["status"]})
    return {"training": info, "data": test_set.source, "rows": rows, **result}
