"""Governed patching: the seed's process of inventory, baselines, testing, authorization, approval,
promotion of exactly the tested versions, audit and notification.

- ``patch_refs``: one update at one exact version (a Windows KB, a Linux package at a version) and its keys;
- ``categories`` / ``categories_table``: asset categories (membership, rings, deadlines, approval rules);
- ``patches`` / ``patches_table``: the patch inventory, each update's state per category and its history;
- ``approvals``: requests and decisions with separation of duties;
- ``evidence``: test evidence from deployment runs on a category's test ring;
- ``releases`` / ``releases_table``: named, immutable sets of exact versions (a category's baseline);
- ``enforcement``: what a deployment may install where approval is required;
- ``audit``: installed versus authorized, missing and overdue, on any past day;
- ``notifications``: CloudEvents to Event Grid and a signed webhook.
"""
