"""Local stand-ins for where notifications go: an Event Grid topic (CloudEvents input schema) over HTTPS,
and a webhook receiver that checks the ``X-Signature-256`` of what it is sent.

See :mod:`local.eventgrid.topic` for what the topic accepts (the rules Event Grid documents) and
:mod:`local.eventgrid.webhook` for the receiver.
"""

from local.eventgrid.topic import EventGridTopicStandIn, TopicCounters
from local.eventgrid.webhook import WebhookReceiver

__all__ = ["EventGridTopicStandIn", "TopicCounters", "WebhookReceiver"]
