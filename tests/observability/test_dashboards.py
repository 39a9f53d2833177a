"""The Grafana dashboards: self-contained, well formed, and every query valid on real metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from observability.promql import (
    DASHBOARDS,
    PROMETHEUS_SERIES,
    metric_names,
    run_promtool,
    substitute_variables,
)

from sous_core import metrics

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The dashboards issue 6 asks for.
TITLES = {"sous-overview.json": "Sous / Overview", "sous-workers.json": "Sous / Workers"}
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)")


def dashboard_paths() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict) -> Iterator[dict]:
    return (panel for panel in panels(dashboard) if panel["type"] != "row")


def template_variables(dashboard: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL as Prometheus receives it) for every panel target and variable."""
    names = set(template_variables(dashboard))
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            where = f"{dashboard['uid']}: {panel['title']} ({target['refId']})"
            yield where, substitute_variables(target["expr"], names)
    for name, variable in template_variables(dashboard).items():
        if variable["type"] == "query":
            match = LABEL_VALUES.fullmatch(variable_query(variable))
            assert match, f"{name}: only label_values(selector, label) queries are checked"
            yield f"{dashboard['uid']}: ${name}", substitute_variables(match.group(1), names)


def all_queries() -> list[tuple[str, str]]:
    return [query for path in dashboard_paths() for query in queries(load(path))]


def test_should_ship_the_dashboards_the_issue_asks_for() -> None:
    assert {path.name: load(path)["title"] for path in dashboard_paths()} == TITLES


def test_should_have_unique_uids_and_titles() -> None:
    dashboards = [load(path) for path in dashboard_paths()]
    uids = [dashboard["uid"] for dashboard in dashboards]
    titles = [dashboard["title"] for dashboard in dashboards]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda path: path.name)
def test_should_be_self_contained_and_editable(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["editable"] is True
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["id"] is None, "a provisioned dashboard carries no database id"
    assert "__inputs" not in dashboard, "an export for sharing; provisioning needs none"
    datasource = template_variables(dashboard)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda path: path.name)
def test_should_give_every_panel_the_datasource_variable_a_query_and_a_unit(path: Path) -> None:
    dashboard = load(path)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in query_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']}: no unit"
        assert panel["title"]
        assert panel["description"], panel["title"]


@pytest.mark.parametrize("path", dashboard_paths(), ids=lambda path: path.name)
def test_should_lay_panels_out_without_overlap(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load(path)):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_should_parse_every_query_with_promtool(tmp_path: Path) -> None:
    """promtool parses each expression as the body of a recording rule."""
    found = all_queries()
    assert len(found) > 30
    rules = [
        {"record": f"sous_dashboard_check:query_{index}", "expr": expr}
        for index, (_, expr) in enumerate(found)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.mark.parametrize(
    ("where", "expr"), all_queries(), ids=[where for where, _ in all_queries()]
)
def test_should_query_only_metrics_sous_exports(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr}"
    unknown = names - metrics.exported_names() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} are not in sous_core.metrics"
