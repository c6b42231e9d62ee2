"""The published Z-Image lists, restated edge by edge from the official scripts' notes (shared/docs/peers.md, 2c)."""

import pytest

from comfy_meancache.core.official import OFFICIAL_ZIMAGE_50, official_plan, official_schedule
from comfy_meancache.core.sigmas import flow_sigmas

# budget -> skipped edges "a-b:k" as published (edges between consecutive calls are chains)
PUBLISHED_EDGES = {
    25: "6-8:2 8-10:2 13-15:2 18-20:5 20-22:5 22-29:1 29-37:1 37-42:1 42-45:5 45-47:5",
    20: "4-6:2 6-8:2 8-10:2 10-12:2 12-14:2 14-16:5 16-18:4 18-20:5 20-22:5 22-30:1 30-38:1 38-43:1 43-46:5 46-48:2",
    17: "4-6:2 6-8:2 8-10:2 10-12:2 12-14:2 14-19:1 19-27:1 27-35:1 35-43:1 43-46:5 46-48:2",
    15: "3-5:2 5-7:2 7-10:2 10-12:2 12-17:1 17-25:1 25-33:1 33-41:1 41-45:5 45-48:4",
    13: "3-5:2 5-9:1 9-15:1 15-22:1 22-29:1 29-36:1 36-43:1 43-47:5 47-49:2",
}


def skipped_edges(schedule) -> str:
    nodes = schedule.computed_steps
    return " ".join(f"{a}-{b}:{schedule.span[a + 1]}" for a, b in zip(nodes, nodes[1:]) if b - a > 1)


@pytest.mark.parametrize("budget", sorted(PUBLISHED_EDGES))
def test_lists_and_spans_are_the_published_ones(budget):
    schedule = official_schedule(budget)
    assert schedule.model_calls == budget and schedule.steps == 50 and schedule.estimator == "meancache"
    assert skipped_edges(schedule) == PUBLISHED_EDGES[budget]
    nodes = schedule.computed_steps
    assert all(len(set(schedule.span[a + 1 : b])) == 1 for a, b in zip(nodes, nodes[1:]) if b - a > 1)


def test_the_nearest_list_is_chosen_and_moved_by_sigma():
    assert sorted(OFFICIAL_ZIMAGE_50) == [13, 15, 17, 20, 25]
    moved = official_plan(flow_sigmas(50, shift=3.0), 20)
    assert moved.settings.cost_key == "official-zimage-50" and moved.model_calls == 20
    assert any("official Z-Image list B=20" in note for note in moved.notes)
