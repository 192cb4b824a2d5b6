"""Tumour boards (RCP): boards, members, sessions, cases (fiche RCP), quorum, decisions, reports.

Layers: ``rcp.domain`` (pure rules: fiche validation, lifecycle, quorum, calendar, report value),
``rcp.models`` (tables), ``rcp.service`` (check_*/do_* against the database), ``rcp.web`` (pages
and the ``/api/v1/rcp`` JSON API). Publication of a signed report goes through the
``rcp.domain.report.ReportPublisher`` protocol (the seam the workflow package implements).
"""
