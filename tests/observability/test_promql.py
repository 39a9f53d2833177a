"""The metric-name extractor and the Grafana variable substitution the other tests rely on."""

from __future__ import annotations

import pytest
from observability.promql import metric_names, substitute_variables


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('celery_queue_length{queue_name="dead_letter"} > 0', {"celery_queue_length"}),
        (
            "histogram_quantile(0.95, sum by (queue_name, le) "
            '(rate(celery_task_runtime_bucket{queue_name=~"fast|heavy", name!="x"}[5m])))',
            {"celery_task_runtime_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) / ignoring (status) group_left (kind) "
            "sum without (instance) (rate(b_total[5m] offset 1h))",
            {"a_total", "b_total"},
        ),
        ("sum(x_total) by (le) * on (namespace, queue_name) group_right y", {"x_total", "y"}),
        (
            "celery_worker_up == 0 and celery_worker_tasks_active == bool 0",
            {"celery_worker_up", "celery_worker_tasks_active"},
        ),
        ("time() - max by (namespace) (last_seconds) > 1.2e2", {"last_seconds"}),
        ('absent(up{job=~".*sous.*"}) or vector(1) unless z', {"up", "z"}),
        ("max_over_time(rate(c_total[5m])[1h:5m]) > -Inf", {"c_total"}),
        (
            'count_values("version", build_info) or topk(3, w) or quantile(0.9, v)',
            {"build_info", "w", "v"},
        ),
        ('label_replace(m, "dst", "$1 by (x)", "src", "(.*)")', {"m"}),
        ("recorded:rate5m{job='x'} @ 1609746000", {"recorded:rate5m"}),
    ],
)
def test_should_find_every_metric_an_expression_selects(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_should_refuse_selection_by_name_matcher() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"celery_.*"}')


def test_should_replace_grafana_variables() -> None:
    expr = 'rate(x{namespace=~"$namespace", q=~"${queue}", t=~"[[task]]"}[$__rate_interval])'
    assert substitute_variables(expr, {"namespace", "queue", "task"}) == (
        'rate(x{namespace=~".*", q=~".*", t=~".*"}[5m])'
    )
    assert substitute_variables("increase(x[$__range])", set()) == "increase(x[1h])"


def test_should_refuse_unknown_grafana_variables() -> None:
    with pytest.raises(ValueError, match=r"\$queue"):
        substitute_variables('x{q=~"$queue"}', {"namespace"})
