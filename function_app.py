"""The Function App: create the Durable app and register the blueprints. Nothing else lives here."""

import azure.durable_functions as df
import azure.functions as func

from functions.approval_rules import bp as approval_rules_blueprint
from functions.approvals_api import bp as approvals_api_blueprint
from functions.assessment import bp as assessment_blueprint
from functions.audit_api import bp as audit_api_blueprint
from functions.categories_api import bp as categories_api_blueprint
from functions.changes_api import bp as changes_api_blueprint
from functions.compliance_audit import bp as compliance_audit_blueprint
from functions.deployment_runs_api import bp as deployment_runs_api_blueprint
from functions.deployments import bp as deployments_blueprint
from functions.deployments_api import bp as deployments_api_blueprint
from functions.discovery import bp as discovery_blueprint
from functions.durable_timestamps import install as install_history_timestamps
from functions.evidence import bp as evidence_blueprint
from functions.health_checks import bp as health_checks_blueprint
from functions.inventory_api import bp as inventory_api_blueprint
from functions.light_check import bp as light_check_blueprint
from functions.log_outbox import bp as log_outbox_blueprint
from functions.notifications import bp as notifications_blueprint
from functions.openapi import bp as openapi_blueprint
from functions.patches_api import bp as patches_api_blueprint
from functions.releases_api import bp as releases_api_blueprint
from functions.rollback import bp as rollback_blueprint
from functions.runs_api import bp as runs_api_blueprint
from shared.assessment.recording import listen_for_new_versions
from shared.governance.first_seen import record_new_versions

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
app.register_functions(notifications_blueprint)
app.register_functions(categories_api_blueprint)
app.register_functions(releases_api_blueprint)
app.register_functions(evidence_blueprint)
app.register_functions(audit_api_blueprint)
app.register_functions(compliance_audit_blueprint)
app.register_functions(patches_api_blueprint)
app.register_functions(approvals_api_blueprint)
app.register_functions(approval_rules_blueprint)
app.register_functions(changes_api_blueprint)
app.register_functions(health_checks_blueprint)
app.register_functions(rollback_blueprint)
# An update version the assessment sees for the first time gets its patch inventory record (issue 13).
listen_for_new_versions(record_new_versions)
