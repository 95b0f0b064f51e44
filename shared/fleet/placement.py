"""Where a machine stands among the asset categories, as the fleet keeps and reports it.

The categories and the rules that place a machine are governance's (shared.governance.categories); the
fleet only carries the answer: discovery is given a placer, writes its answer on the Machines entity
(``AssetCategory``, ``Ring``) and into the machine's Heartbeat_CL row, and the machine list filters on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.model.machines import Machine

# The Machines entity's properties (and the Heartbeat_CL columns) of a machine's placement. Not
# "Category": Heartbeat_CL's Category already says Azure VM or Arc-enabled server (the legacy Heartbeat).
ASSET_CATEGORY = "AssetCategory"
RING = "Ring"

# A machine's placement: its category's name and its ring's (None when it is in no category).
MachinePlacement = tuple[str, str | None]
# Places machines: their placement by machine key. A machine left out (no category can tell yet) keeps
# what its entity has, and its heartbeat row names no category.
Placer = Callable[[Sequence[Machine]], Mapping[str, MachinePlacement]]


def placement_properties(placement: MachinePlacement) -> dict[str, str]:
    """The Machines entity's properties for ``placement`` (an empty Ring: Table merges cannot drop one)."""
    category, ring = placement
    return {ASSET_CATEGORY: category, RING: ring or ""}


def stored_placement(entity: Mapping[str, Any]) -> MachinePlacement | None:
    """The placement a Machines entity holds; None before any placement was written."""
    category = entity.get(ASSET_CATEGORY)
    if not category:
        return None
    return str(category), str(entity.get(RING) or "") or None
