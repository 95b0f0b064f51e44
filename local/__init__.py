"""The one-machine host: stand-ins for the Functions host, Durable Functions, ARM,
Log Analytics and Azure Storage (Azurite). Never imported by ``functions/`` or ``shared/``."""
