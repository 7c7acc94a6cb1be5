"""Training: the clip forward wrapper, data pipelines and the `mlvos train` loop."""
