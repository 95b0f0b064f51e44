"""A local Azure Resource Graph: the query API over HTTPS, KQL over DuckDB.

See :mod:`local.resourcegraph.server` for the wire format, paging and quota, :mod:`local.resourcegraph.store`
for the tables, and :mod:`local.resourcegraph.rows` for the rows the ARM simulation's operations leave
(Azure Update Manager's shapes). The simulation reports to :attr:`ResourceGraphStandIn.feed`:

* a finished assessment: ``feed.assessment_finished(state, activity, op.start, op.end)``;
* a finished install, after the machine's installation summary is rewritten:
  ``feed.installation_finished(state, outcome, activity, op.start, op.end)``;
* machines: ``feed.machines_added(machines)``; a power state changed: ``feed.machine_changed(state)``.
"""

from local.resourcegraph.rows import ResourceGraphFeed, assessment_rows, installation_rows, machine_row
from local.resourcegraph.server import Counters, ResourceGraphStandIn
from local.resourcegraph.store import ResourceGraphStore, RowRejected

__all__ = [
    "Counters",
    "ResourceGraphFeed",
    "ResourceGraphStandIn",
    "ResourceGraphStore",
    "RowRejected",
    "assessment_rows",
    "installation_rows",
    "machine_row",
]
