"""Task evaluation: accuracy, exact match, ROUGE-L, BLEU, chrF and NLL per token from per-example
evaluation records, with intervals over examples and the check that a control model learned its task.

Stage: evaluation (reads evaluation records; no model).
"""

from mossa.evaluation._intervals import (
    Interval,
    gain_share_interval,
    metric_interval,
    paired_gain_interval,
    wilson_interval,
)
from mossa.evaluation._metrics import (
    CORPUS_CLUSTERS,
    LOWER_IS_BETTER,
    MetricScores,
    exact_match_scores,
    normalize_answer,
    option_scores,
    primary_metric,
    record_metrics,
    rouge_l_scores,
    task_metrics,
)
from mossa.evaluation._performance import (
    CONTROL_COLUMNS,
    PERFORMANCE_COLUMNS,
    control_check,
    named_stream,
    performance_table,
)

__all__ = ["CONTROL_COLUMNS", "CORPUS_CLUSTERS", "LOWER_IS_BETTER", "PERFORMANCE_COLUMNS", "Interval", "MetricScores", "control_check",
           "exact_match_scores", "gain_share_interval", "metric_interval", "named_stream", "normalize_answer", "option_scores", "paired_gain_interval",
           "performance_table", "primary_metric", "record_metrics", "rouge_l_scores", "task_metrics",
           "wilson_interval"]
