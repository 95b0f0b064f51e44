"""The fleet: discovering machines, the machines table, the machine query and assessment scopes."""
