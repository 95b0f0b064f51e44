"""The ARM stand-in and the simulated fleet behind it.

``fleet`` (the fleet file's typed model), ``catalogue`` (updates per OS), ``generator``
(seeded fleets), ``simulation`` (assess/install on the shared clock) and ``server``
(:class:`~local.arm.server.ArmStandIn`, the HTTPS server the real Azure SDK clients use).
"""
