"""The audit's rules: what a machine was missing on a past day and since when, overdue against its category's
deadline, installed against authorized, failed and incomplete installs, and the CSV and daily row."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest

from shared.governance.audit import (
    CSV_COLUMNS,
    AuditError,
    CategoryFacts,
    Finding,
    GapFacts,
    HistoryPoint,
    InstallFacts,
    MachineFacts,
    MissingOn,
    MissingUpdate,
    audit_machine,
    audit_moment,
    category_facts,
    compliance_row,
    end_of_day,
    missing_on,
    parse_audit_query,
    summary,
    to_csv,
)
from shared.governance.categories import validate_category
from shared.governance.evidence import NOT_REQUIRED, UNAUTHORIZED
from shared.governance.patch_refs import PatchRef
from shared.log_tables import PATCH_COMPLIANCE, check_rows
from shared.model.machines import OsType

JAN = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


def day(n: int) -> datetime:
    """03:00 UTC on January ``n`` (an assessment's time)."""
    return JAN + timedelta(days=n - 1)


VMS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines"
WIN = MachineFacts("k1", f"{VMS}/web1", "web1.contoso.com", OsType.WINDOWS, "web", "production")
LINUX = MachineFacts("k2", f"{VMS}/db1", "db1", OsType.LINUX, "web", "test")


def point(at: datetime, *keys: str) -> HistoryPoint:
    return HistoryPoint(at, frozenset(keys))


def web_category(**deadlines: int) -> CategoryFacts:
    return category_facts(validate_category({
        "name": "web", "criticality": 1, "owner": {"name": "Web team", "contact": "web@contoso.com"},
        "membership": {"tags": {"role": "web"}}, "deadlines": deadlines or {"critical": 7, "security": 14},
    }))  # fmt: skip


# --- what was missing on a day --------------------------------------------------------------------


def test_a_past_day_answers_what_was_missing_then_after_later_assessments_changed_it():
    # KB1 was missing from Jan 1, installed on Jan 5 and missing again from Jan 8 (a reinstall rolled it
    # back); KB2 missing from Jan 3 and installed on Jan 9. The gaps now hold only the latest episodes.
    history = [  # newest first, as the ~history rows read
        point(day(9), "KB1"),
        point(day(8), "KB1", "KB2"),
        point(day(5), "KB2"),
        point(day(4), "KB1", "KB2"),
        point(day(3), "KB1", "KB2"),
        point(day(1), "KB1"),
    ]
    gaps = {
        "KB1": GapFacts("KB1", "Critical Updates", "Cumulative update", first_seen=day(8)),
        "KB2": GapFacts("KB2", "Security Updates", "Security update", first_seen=day(3), closed_at=day(9)),
    }

    on_jan4 = missing_on(end_of_day(day(4).date()), history, gaps)
    assert on_jan4.assessed_at == day(4)
    assert {u.update_key: u.since for u in on_jan4.updates} == {"KB1": day(1), "KB2": day(3)}
    on_jan6 = missing_on(end_of_day(day(6).date()), history, gaps)
    assert {u.update_key: u.since for u in on_jan6.updates} == {"KB2": day(3)}
    today = missing_on(end_of_day(day(10).date()), history, gaps)
    assert {u.update_key: u.since for u in today.updates} == {"KB1": day(8)}
    assert on_jan4.updates[0].classification == "Critical Updates"  # from the gap


def test_history_is_read_only_as_far_back_as_an_update_stayed_missing():
    read: list[datetime] = []

    def lazily():
        for p in [point(day(5), "KB9"), point(day(4), "KB9"), point(day(3)), point(day(2), "KB9"),
                  point(day(1), "KB9")]:
            read.append(p.assessed_at)
            yield p

    found = missing_on(end_of_day(day(5).date()), lazily(), {})
    assert [u.since for u in found.updates] == [day(4)]
    assert read == [day(5), day(4), day(3)]  # stopped at the first assessment that did not list it


def test_before_the_first_assessment_nothing_is_known():
    found = missing_on(end_of_day(day(1).date()) - timedelta(days=1), [point(day(1), "KB1")], {})
    assert found == MissingOn(None)


def test_a_count_only_assessment_stands_for_the_gaps_open_then_and_older_ones_are_stepped_over():
    gaps = {"KB1": GapFacts("KB1", "Critical Updates", first_seen=day(2)),
            "KB2": GapFacts("KB2", first_seen=day(1), closed_at=day(2))}
    latest_counts = missing_on(end_of_day(day(3).date()), [HistoryPoint(day(3), None), point(day(2), "KB1")],
                               gaps)
    assert [(u.update_key, u.since) for u in latest_counts.updates] == [("KB1", day(2))]
    gap_reopened = {"KB1": GapFacts("KB1", first_seen=day(9))}
    history = [point(day(4), "KB1"), HistoryPoint(day(3), None), point(day(2), "KB1"), point(day(1))]
    stepped = missing_on(end_of_day(day(4).date()), history, gap_reopened)
    assert [u.since for u in stepped.updates] == [day(2)]


# --- findings ------------------------------------------------------------------------------------------


def test_overdue_is_marked_against_the_categorys_deadline_by_whole_days():
    missing = MissingOn(day(20), (
        MissingUpdate("KB1", day(1), "Critical Updates"),  # 7 days: due Jan 8
        MissingUpdate("KB2", day(10), "Security Updates"),  # 14 days: due Jan 24, not yet
        MissingUpdate("KB3", day(1), "Updates"),  # other: 60 days (the default), not yet
    ))  # fmt: skip
    as_of = end_of_day(day(20).date())
    audit = audit_machine(as_of.date(), as_of, WIN, web_category(), missing, [], set())
    [overdue] = [f for f in audit.findings if f.kind is Finding.OVERDUE]
    assert (overdue.update, overdue.deadline_days, overdue.due_at) == ("KB1", 7, day(8))
    assert overdue.overdue_days == 13  # Jan 8 03:00 to Jan 20 23:59:59.999 is 12 days and a part
    assert overdue.days_missing == 19
    assert (audit.max_overdue_days, audit.missing) == (13, 3)
    stricter = audit_machine(as_of.date(), as_of, WIN, web_category(security=5, other=10), missing, [], set())
    assert {f.update: f.overdue_days for f in stricter.findings if f.kind is Finding.OVERDUE} == {
        "KB1": 13, "KB2": 6, "KB3": 10}


def test_uncategorised_machines_have_the_default_deadlines():
    missing = MissingOn(day(20), (MissingUpdate("KB1", day(1), "Security Updates"),))
    as_of = end_of_day(day(20).date())
    audit = audit_machine(as_of.date(), as_of, WIN, category_facts(None), missing, [], set())
    assert [(f.kind, f.deadline_days) for f in audit.findings] == [(Finding.OVERDUE, 14)]
    assert (audit.category.name, audit.category.owner) == ("uncategorised", "")


def install(ref: PatchRef, at: datetime, status: str, authorized: str = "req-1") -> InstallFacts:
    return InstallFacts(ref, at, status, run_id=f"run-{at.day}", deployment="web-monthly",
                        authorized_by=authorized)


def test_installs_are_judged_by_their_latest_attempt_and_the_authorization_recorded():
    kb1, kb2, kb3, kb4 = (PatchRef(OsType.WINDOWS, kb=str(n)) for n in (5001, 5002, 5003, 5004))
    installs = [
        install(kb1, day(2), "succeeded"),
        install(kb2, day(2), "succeeded", UNAUTHORIZED),
        install(kb3, day(2), "failed"),
        install(kb3, day(3), "succeeded", NOT_REQUIRED),  # a retry that worked
        install(kb4, day(3), "notStarted"),  # the window closed before its turn
        install(PatchRef(OsType.WINDOWS, kb="5005"), day(9), "failed"),  # after the audited day
    ]
    as_of = end_of_day(day(4).date())
    missing = MissingOn(day(1), (MissingUpdate("KB5004", day(1), "Updates"),))
    audit = audit_machine(as_of.date(), as_of, WIN, web_category(), missing, installs, set())
    assert [(f.kind, f.update, f.authorized_by) for f in audit.findings] == [
        (Finding.INSTALLED_AUTHORIZED, "KB5001", "req-1"),
        (Finding.INSTALLED_AUTHORIZED, "KB5003", NOT_REQUIRED),
        (Finding.INSTALLED_UNAUTHORIZED, "KB5002", UNAUTHORIZED),
        (Finding.INCOMPLETE_INSTALL, "KB5004", "req-1"),
    ]
    assert audit.findings[0].installed_at == day(2) and audit.findings[0].run_id == "run-2"


def test_a_failed_install_stands_until_an_assessment_finds_the_update_installed():
    ref = PatchRef(OsType.LINUX, package="openssl", version="3.0.2-0ubuntu1.12")
    failed = [install(ref, day(2), "failed")]
    as_of = end_of_day(day(3).date())
    not_since = audit_machine(as_of.date(), as_of, LINUX, web_category(), MissingOn(day(1)), failed, set())
    assert [f.kind for f in not_since.findings] == [Finding.FAILED_INSTALL]
    still = MissingOn(day(3), (MissingUpdate("openssl", day(1), "Security"),))
    assert [f.kind for f in audit_machine(as_of.date(), as_of, LINUX, web_category(), still, failed,
                                          set()).findings] == [Finding.FAILED_INSTALL]
    cleared = audit_machine(as_of.date(), as_of, LINUX, web_category(), MissingOn(day(3)), failed, set())
    assert cleared.findings == ()


def test_a_newer_version_installed_supersedes_the_failure_of_an_older_one():
    old = PatchRef(OsType.LINUX, package="curl", version="7.81.0-1ubuntu1.14")
    new = PatchRef(OsType.LINUX, package="curl", version="7.81.0-1ubuntu1.15")
    as_of = end_of_day(day(5).date())
    audit = audit_machine(as_of.date(), as_of, LINUX, web_category(), MissingOn(day(1)),
                          [install(old, day(2), "failed"), install(new, day(4), "succeeded")], set())
    assert [(f.kind, f.update) for f in audit.findings] == [
        (Finding.INSTALLED_AUTHORIZED, "curl=7.81.0-1ubuntu1.15")]


def test_authorized_but_missing_names_the_approved_version_the_machine_lacks():
    approved = {PatchRef(OsType.LINUX, package="openssl", version="3.0.2-0ubuntu1.12"),
                PatchRef(OsType.LINUX, package="zlib1g", version="1:1.2.11"),
                PatchRef(OsType.WINDOWS, kb="5034441")}
    missing = MissingOn(day(3), (MissingUpdate("openssl", day(2), "Security", "openssl"),
                                 MissingUpdate("KB5034441", day(2), "Security Updates")))
    as_of = end_of_day(day(3).date())
    audit = audit_machine(as_of.date(), as_of, LINUX, web_category(), missing, [], approved)
    assert [(f.kind, f.update, f.missing_since, f.days_missing) for f in audit.findings] == [
        (Finding.AUTHORIZED_MISSING, "openssl=3.0.2-0ubuntu1.12", day(2), 1)]


def test_a_machine_offered_a_newer_version_than_the_approved_one_is_not_missing_the_approved_one():
    # It has the approved version installed and is offered a newer one (the gap names the offered version).
    approved = {PatchRef(OsType.LINUX, package="openssl", version="1.1.1f-1ubuntu2.21")}
    as_of = end_of_day(day(3).date())
    offered = MissingUpdate("openssl", day(2), "Security", "openssl", "1.1.1f-1ubuntu2.22")
    newer = MissingOn(day(3), (offered,))
    assert audit_machine(as_of.date(), as_of, LINUX, web_category(), newer, [], approved).findings == ()
    same = MissingOn(day(3), (MissingUpdate("openssl", day(2), "Security", "openssl", "1.1.1f-1ubuntu2.21"),))
    assert [f.kind for f in audit_machine(as_of.date(), as_of, LINUX, web_category(), same, [],
                                          approved).findings] == [Finding.AUTHORIZED_MISSING]


def test_a_day_after_today_is_refused_and_today_is_judged_now():
    now = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)
    with pytest.raises(AuditError) as refused:
        audit_moment(date(2026, 1, 13), now)
    assert refused.value.field == "on" and "future" in refused.value.message
    assert audit_moment(date(2026, 1, 12), now) == now
    assert audit_moment(date(2026, 1, 11), now) == datetime(2026, 1, 11, 23, 59, 59, 999000, tzinfo=UTC)


# --- the CSV and the daily row --------------------------------------------------------------------------


def test_the_csv_has_a_header_and_a_row_per_finding_quoted_as_rfc_4180_asks():
    as_of = end_of_day(day(20).date())
    missing = MissingOn(day(20), (
        MissingUpdate("KB1", day(1), "Critical Updates", 'Update "A", for Windows'),
        MissingUpdate("KB2", day(1), "Critical Updates", "=HYPERLINK(\"http://x\")"),
    ))  # fmt: skip
    noisy = audit_machine(as_of.date(), as_of, WIN, web_category(), missing, [], set())
    clean = audit_machine(as_of.date(), as_of, LINUX, web_category(), MissingOn(day(20)), [], set())

    text = to_csv([noisy, clean])

    assert text.count("\r\n") == 4 and text.endswith("\r\n")  # header, two findings, one clean machine
    assert '"Update ""A"", for Windows"' in text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(CSV_COLUMNS)
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert (first["Computer"], first["Finding"], first["Update"], first["OverdueDays"]) == (
        "web1.contoso.com", "overdue", "KB1", "13")
    assert (first["Owner"], first["OwnerContact"], first["DueAt"]) == (
        "Web team", "web@contoso.com", "2026-01-08 03:00:00Z")
    assert rows[2][CSV_COLUMNS.index("Title")] == "'=HYPERLINK(\"http://x\")"  # shown as text, never run
    assert rows[3][CSV_COLUMNS.index("Computer")] == "db1" and rows[3][CSV_COLUMNS.index("Finding")] == ""


def test_the_daily_row_counts_each_finding_and_is_one_per_machine_and_day():
    as_of = end_of_day(day(20).date())
    kb = PatchRef(OsType.WINDOWS, kb="5001")
    missing = MissingOn(day(20), (MissingUpdate("KB1", day(1), "Critical Updates"),
                                  MissingUpdate("KB5001", day(1), "Critical Updates")))
    audit = audit_machine(as_of.date(), as_of, WIN, web_category(), missing,
                          [install(kb, day(2), "succeeded", UNAUTHORIZED)], {kb})
    generated = datetime(2026, 1, 21, 0, 30, tzinfo=UTC)

    row = compliance_row(audit, generated)

    check_rows(PATCH_COMPLIANCE, [row])
    assert set(row) == set(PATCH_COMPLIANCE.column_names())
    assert (row["AssetCategory"], row["Ring"], row["Owner"], row["MissingUpdates"]) == ("web", "production",
                                                                                         "Web team", 2)
    counts = (row["InstalledUnauthorized"], row["AuthorizedMissing"], row["Overdue"], row["MaxOverdueDays"])
    assert counts == (1, 1, 2, 13)
    assert row["AuditDate"] == datetime(2026, 1, 20, tzinfo=UTC)
    # One row per machine, day and run: the timer's run of the day again (same slot) queues the same id,
    # a run of the day so far (make run) its own.
    assert row["RecordId"] == compliance_row(audit, generated)["RecordId"]
    assert row["RecordId"] != compliance_row(audit, generated + timedelta(hours=3))["RecordId"]
    assert summary([audit])["findings"]["overdue"] == 2 and summary([audit])["machinesWith"]["overdue"] == 1


def test_the_query_string_is_checked_whole_and_every_bad_parameter_named():
    now = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)
    with pytest.raises(AuditError) as refused:
        parse_audit_query({"on": "2026-01-13", "format": "xlsx", "pageSize": "1001", "category": "a/b"}, now)
    assert [field for field, _ in refused.value.details] == ["on", "format", "pageSize", "category"]
    assert refused.value.field == "on"
    query = parse_audit_query({"on": "2026-01-05", "format": "CSV", "category": "uncategorised",
                               "machine": "web1"}, now)
    assert (query.day, query.as_of, query.format, query.page_size, query.category, query.machine) == (
        date(2026, 1, 5), end_of_day(date(2026, 1, 5)), "csv", 200, "uncategorised", "web1")
    assert parse_audit_query({}, now).as_of == now  # today, judged now
