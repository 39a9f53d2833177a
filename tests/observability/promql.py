"""PromQL helpers for the dashboard and alert tests: metric names, Grafana variables, promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sous"
DASHBOARDS = CHART / "dashboards"
RULES = CHART / "rules" / "sous-alerts.yaml"
RULE_TESTS = CHART / "rules" / "tests"

#: Prometheus' own series, scraped for every target; the only name Sous does not export.
PROMETHEUS_SERIES = {"up"}

#: Aggregation operators take their arguments after an optional ``by``/``without`` clause,
#: so unlike functions they are not always followed by ``(``.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
AGGREGATIONS |= {"count_values", "bottomk", "topk", "quantile"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "atan2", "offset", "inf", "nan"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_MODIFIER = re.compile(r"\boffset\s+-?[0-9a-z]+|@\s*[0-9.]+")
_NUMBER = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|\d[\w.]*|\.\d[\w]*)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{job="x"}[5m])) > bool 0.5 or b'))
    ['a_bucket', 'b']
    """
    if "__name__" in expr:
        raise ValueError(f"select metrics by name, not by __name__ matchers: {expr}")
    text = _STRING.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    while _RANGE.search(text):  # subqueries nest ranges: x[5m])[1h:1m]
        text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(r"\1 ", text)
    text = _MODIFIER.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation: rate(…), sum(…)
        if word.lower() in KEYWORDS | AGGREGATIONS:
            continue
        names.add(word)
    return names


#: Grafana's built-in variables, replaced by a value of the kind Grafana puts there.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute_variables(expr: str, template_variables: set[str]) -> str:
    """``expr`` as Grafana sends it, every template variable at "All" (``.*``)."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in template_variables:
            return ".*"
        raise ValueError(f"unknown Grafana variable ${name} in {expr}")

    return _VARIABLE.sub(value, expr)


def alert_rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool() -> str:
    """The promtool binary, or skip: ``make test`` installs it (scripts/ensure_tools.sh)."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed: run `make tools` (scripts/ensure_tools.sh)")
    return binary


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
