"""Update deployments: definitions, schedules, the scheduler, rollout rules, install, results, run storage."""
