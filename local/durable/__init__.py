"""The local Durable Functions runner: the SDK's own replay, driven on one machine."""

from local.durable.client_api import ClientApiServer
from local.durable.runner import (
    DurableRunner,
    DurableRunnerError,
    HostRestartOutcome,
    InstanceAlreadyRunning,
    InstanceGone,
    InstanceNotFound,
    InvalidInstanceId,
    NonDeterminismError,
    UnknownFunction,
)

__all__ = [
    "ClientApiServer",
    "DurableRunner",
    "DurableRunnerError",
    "HostRestartOutcome",
    "InstanceAlreadyRunning",
    "InstanceGone",
    "InstanceNotFound",
    "InvalidInstanceId",
    "NonDeterminismError",
    "UnknownFunction",
]
