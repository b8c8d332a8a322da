"""Reads a folder of TensorBoard event files with TensorBoard's own reader and prints, as JSON,
every scalar series ({tag: [[step, value], ...]}) and every text series
({tag: [[step, text], ...]}). Used by tests/tensorboard.rs.

    python scripts/read_tensorboard.py DIR
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

accumulator = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
accumulator.Reload()
tags = accumulator.Tags()
print(
    json.dumps(
        {
            "scalars": {
                tag: [[event.step, event.value] for event in accumulator.Scalars(tag)]
                for tag in tags["scalars"]
            },
            "text": {
                tag: [
                    [event.step, event.tensor_proto.string_val[0].decode("utf-8")]
                    for event in accumulator.Tensors(tag)
                ]
                for tag in tags["tensors"]
            },
        }
    )
)
