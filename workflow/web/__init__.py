"""Workflow in the web app: services, the in-process delivery worker, the outbox trace page."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from konsil import appkeys as K
from konsil.appkeys import DashboardPanel
from konsil.audit.service import Actor
from konsil.auth.service import Principal
from konsil.web import ops
from workflow.connectors.worker import worker_context
from workflow.corrections import Corrections
from workflow.documents import DocumentStore
from workflow.outbox import DeliveryWorker, Outbox
from workflow.signing import KeyRing
from workflow.views import DocumentViews, Filters, delivery_label
from workflow.web import documents, pages
from workflow.web.i18n import PAGES_EN, REFUSALS_FR
from workflow.web.keys import CORRECTIONS, DOCUMENTS, KEYS, OUTBOX, VIEWS, WORKER

FRENCH = {
    "Outgoing messages": "Messages sortants",
    "Older documents": "Documents plus anciens",
    "Target": "Destinataire",
    "Status": "Statut",
    "Attempts": "Tentatives",
    "Reference": "Référence",
    "Last error": "Dernière erreur",
    "Retry": "Renvoyer",
    "Created": "Créé",
    "Latency": "Latence",
    "Worker": "Worker",
    "No outgoing messages.": "Aucun message sortant.",
    "All": "Tous",
    "Rejected documents": "Documents refusés",
    "Message queued for another delivery.": "Message remis en file d'envoi.",
    "My documents": "Mes documents",
    "Documents": "Documents",
    "Documents of": "Documents de",
    "Type": "Type",
    "Patient": "Patient",
    "Author": "Auteur",
    "Version": "Version",
    "Delivery": "Transmission",
    "Filter": "Filtrer",
    "Download the CDA": "Télécharger le CDA",
    "Detached signature": "Signature détachée",
    "Patient's copy (PDF)": "Copie patient (PDF)",
    "Employer's copy (PDF)": "Copie employeur (PDF)",
    "Printable PDF": "PDF imprimable",
    "Correct this certificate": "Corriger ce certificat",
    "Correct this report": "Corriger ce compte rendu",
    "Correct this prescription": "Corriger cette prescription",
    "An RCP report records a board's decision: it is not corrected here by one author. If it "
    "is wrong, mark it as entered in error and submit the case to the board again.": (
        "Un compte rendu de RCP consigne la décision d'une réunion de concertation "
        "pluridisciplinaire : son auteur ne le corrige pas ici. S'il est erroné, marquez-le "
        "comme établi par erreur et présentez à nouveau le dossier à la RCP."
    ),
    "Mark as entered in error": "Marquer comme établi par erreur",
    "withdrawal": "retrait",
    "Withdrawn: issued by mistake": "Retiré : établi par erreur",
    "Entered in error: this document was withdrawn. Receivers that held it are told to "
    "withdraw it (see Delivery).": (
        "Établi par erreur : ce document a été retiré. Les destinataires qui le détenaient "
        "sont invités à le retirer (voir Transmission)."
    ),
    "Versions": "Versions",
    "Replaced by": "Remplacé par",
    "Replaces": "Remplace",
    "Rejected": "Refusé",
    "Correction of a sick-leave certificate": "Correction d'un certificat d'incapacité de travail",
    "Correction of a teleconsultation report": "Correction d'un compte rendu de téléconsultation",
    "Correction of a prescription": "Correction d'une prescription de médicaments",
    "The corrected version replaces this one (which stays readable, marked amended) and goes "
    "to every receiver of this one.": (
        "La version corrigée remplace celle-ci (qui reste consultable, marquée « amended ») et "
        "part vers chacun de ses destinataires."
    ),
    "Back to the document": "Retour au document",
    "The call": "L'appel",
    "Recorded from the call: a correction does not change it.": (
        "Enregistré lors de l'appel : une correction ne le modifie pas."
    ),
    "Modality": "Modalité",
    "Patient's consent": "Consentement du patient",
    "yes": "oui",
    "no": "non",
    "Also in the call": "Autres participants",
    "Reason for the teleconsultation": "Motif de la téléconsultation",
    "History of the present illness": "Histoire de la maladie",
    "Findings": "Constatations",
    "Plan": "Conduite à tenir",
    "Follow-up appointment": "Prochain rendez-vous",
    "Start of the treatment": "Début du traitement",
    "Note": "Note",
    "Medication": "Médicament",
    "ATC code": "Code ATC",
    "Product": "Produit",
    "Dose": "Dose",
    "Dose unit": "Unité de dose",
    "Route": "Voie",
    "Times": "Nombre de prises",
    "Per": "Par",
    "Period": "Période",
    "Duration (days)": "Durée (jours)",
    "Quantity to dispense": "Quantité à délivrer",
    "Quantity unit": "Unité de quantité",
    "Instructions": "Mode d'emploi",
    "Reimbursed by the CNS": "Remboursé par la CNS",
    "Remove this medication": "Retirer ce médicament",
    "is recorded from the call and cannot be corrected": (
        "est enregistré lors de l'appel et ne peut pas être corrigé"
    ),
    "is not a field of this document": "n'est pas un champ de ce document",
    "Issue the corrected version": "Émettre la version corrigée",
    "The corrected version was signed and queued for delivery.": (
        "La version corrigée a été signée et mise en file d'envoi."
    ),
    "No documents.": "Aucun document.",
    "Start": "Début",
    "End": "Fin",
    "First day off work": "Premier jour d'arrêt de travail",
    "Diagnosis (ICD-10)": "Diagnostic (CIM-10)",
    "Diagnosis label": "Libellé du diagnostic",
    "Accident date": "Date de l'accident",
    "Accident reference": "Référence de l'accident",
    "Child's matricule": "Matricule de l'enfant",
    "Child's given name": "Prénom de l'enfant",
    "Child's family name": "Nom de l'enfant",
    "Presumed delivery date": "Date présumée de l'accouchement",
    "Address during the incapacity": "Adresse pendant l'incapacité",
    "Postal code": "Code postal",
    "City": "Localité",
    "Country": "Pays",
    "Outings allowed": "Sorties autorisées",
    "Hospitalised": "Hospitalisation",
    "Extension of an earlier certificate": "Prolongation",
    "Accident": "Accident",
}


def secret_of(app: web.Application) -> str:
    config = app[K.CONFIG]
    return config.workflow.signing_key_secret or config.secret_key


def setup(app: web.Application) -> None:
    app[K.TRANSLATOR].add(FRENCH)
    app[K.TRANSLATOR].add(REFUSALS_FR)
    app[K.TRANSLATOR].add_english(PAGES_EN)
    app.router.add_routes(pages.routes)  # first: /documents/rejected before /documents/{id}
    app.router.add_routes(documents.routes)
    app[ops.OPENAPI]["paths"].update(documents.openapi_paths())
    app[ops.OPENAPI]["components"]["schemas"].update(documents.openapi_schemas())

    async def workflow_ctx(app: web.Application) -> AsyncIterator[None]:
        config, clock, audit = app[K.CONFIG], app[K.CLOCK], app[K.AUDIT]
        app[KEYS] = KeyRing(secret_of(app), clock)
        app[OUTBOX] = Outbox(app[K.DB], clock, audit, max_attempts=config.workflow.max_attempts)
        app[DOCUMENTS] = DocumentStore(clock, audit, app[KEYS], app[OUTBOX])
        app[VIEWS] = DocumentViews(app[K.DB], audit)
        app[CORRECTIONS] = Corrections(app[K.DB], clock, app[DOCUMENTS], app[VIEWS])
        wf = config.workflow
        if not (wf.worker_enabled and (wf.cns_url or wf.dsp_url)):
            yield
            return

        def started(worker: DeliveryWorker) -> None:
            app[WORKER] = worker

        async for _ in worker_context(config, app[K.DB], clock, started):
            yield

    app.cleanup_ctx.append(workflow_ctx)

    async def rejected(principal: Principal) -> list[tuple[str, str]]:
        rows = await app[OUTBOX].rejections_for_author(principal.account_id)
        return [
            (
                f"{delivery_label(m.target, m.kind)}: {m.last_error or ''}"[:200],
                "/documents/rejected",
            )
            for m in rows
        ]

    app[K.PANELS].append(
        DashboardPanel("Rejected documents", "/documents/rejected", rejected, ("practitioner",))
    )

    async def mine(principal: Principal) -> list[tuple[str, str]]:
        # The panel shows patients' names: an audited listing like the full page.
        page = await app[VIEWS].authored(Actor(principal.account_id), principal, Filters(), limit=5)
        return [
            (f"{r.type_display} · {r.patient_name} · {r.status}", f"/documents/{r.id}")
            for r in page.rows
        ]

    app[K.PANELS].append(DashboardPanel("My documents", "/documents", mine, ("practitioner",)))

    async def attention(_principal: Principal) -> list[tuple[str, str]]:
        """Operators: outgoing messages that need a person (given up, or refused by the
        receiver), linking to the trace filtered on that status."""
        counts = await app[OUTBOX].counts(("dead", "rejected"))
        return [
            (f"{status}: {counts[status]}", f"/admin/outbox?status={status}")
            for status in ("dead", "rejected")
            if counts.get(status)
        ]

    app[K.PANELS].append(
        DashboardPanel("Outgoing messages", "/admin/outbox", attention, ("admin",))
    )
