"""The Function App: create the Durable app and register the blueprints. Nothing else lives here."""

import azure.durable_functions as df
import azure.functions as func

from functions.assessment import bp as assessment_blueprint
from functions.deployment_runs_api import bp as deployment_runs_api_blueprint
from functions.deployments import bp as deployments_blueprint
from functions.deployments_api import bp as deployments_api_blueprint
from functions.discovery import bp as discovery_blueprint
from functions.durable_timestamps import install as install_history_timestamps
from functions.inventory_api import bp as inventory_api_blueprint
from functions.light_check import bp as light_check_blueprint
from functions.log_outbox import bp as log_outbox_blueprint
from functions.openapi import bp as openapi_blueprint
from functions.runs_api import bp as runs_api_blueprint

# HTTP functions are anonymous at the Functions level: App Service Authentication (Entra ID)
# signs callers in and each function checks the caller's app role (shared/principal.py).
app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
# Replays read history timestamps without dateutil, with the same results (functions/durable_timestamps.py).
install_history_timestamps()
app.register_functions(discovery_blueprint)
app.register_functions(runs_api_blueprint)
app.register_functions(assessment_blueprint)
app.register_functions(inventory_api_blueprint)
app.register_functions(light_check_blueprint)
app.register_functions(deployments_api_blueprint)
app.register_functions(deployments_blueprint)
app.register_functions(deployment_runs_api_blueprint)
app.register_functions(openapi_blueprint)
app.register_functions(log_outbox_blueprint)
