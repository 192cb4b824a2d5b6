"""Identifiers, code systems and code tables used in Konsil's CDA documents.

Two kinds of facts live here. Those from the eSanté Luxembourg CDA header and from international
code systems (HL7, LOINC, ICD-10, ICD-O-3, ATC) are marked *standard*. Everything under
``KONSIL_OID`` is **Konsil's own assumption**: where we do not know (or there is no) official
Luxembourg value, we use an OID under a UUID arc (ITU-T X.667: ``2.25.<uuid>`` needs no
registration) so our codes can never collide with anyone else's, and a later mapping to the
official values is a change in this module only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# --- standard --------------------------------------------------------------------------------
HL7_NS: Final = "urn:hl7-org:v3"
SDTC_NS: Final = "urn:hl7-org:sdtc"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"

CDA_TYPE_ID_ROOT: Final = "2.16.840.1.113883.1.3"
CDA_TYPE_ID_EXTENSION: Final = "POCD_HD000040"
LU_REALM: Final = "LU"
LU_LANGUAGE: Final = "fr-LU"
LU_HEADER_TEMPLATE: Final = "1.3.182.11.1"  # eSanté general header
LU_SICK_LEAVE_TEMPLATE: Final = "1.3.182.11.8"  # eSanté draft CDA L3 sick-leave certificate
OID_MATRICULE: Final = "1.3.182.4.4"  # Luxembourg national identification number
OID_DOCUMENT_TYPES: Final = "1.3.182.5.9"  # eSanté DT-xxxxx codes
OID_CONFIDENTIALITY: Final = "2.16.840.1.113883.5.25"
OID_ADMIN_GENDER: Final = "2.16.840.1.113883.5.1"
OID_ACT_CODE: Final = "2.16.840.1.113883.5.4"
OID_ROLE_CODE: Final = "2.16.840.1.113883.5.111"
OID_LOINC: Final = "2.16.840.1.113883.6.1"
OID_ICD10: Final = "2.16.840.1.113883.6.3"
OID_ICD_O_3: Final = "2.16.840.1.113883.6.43.1"
OID_ATC: Final = "2.16.840.1.113883.6.73"
OID_EDQM_ROUTE: Final = "0.4.0.127.0.16.1.1.2.1"  # EDQM Standard Terms, routes of administration
OID_UCUM: Final = "2.16.840.1.113883.6.8"

CONFIDENTIALITY: Final[dict[str, str]] = {
    "N": "Normal",
    "R": "Restreint",
    "V": "Très restreint",
}
ADMIN_GENDER: Final[dict[str, str]] = {"F": "Féminin", "M": "Masculin", "UN": "Indifférencié"}

# --- Konsil's own (assumptions) -------------------------------------------------------------
KONSIL_OID: Final = "2.25.219174435857448195926220386976085686005"
OID_KONSIL_CODES: Final = f"{KONSIL_OID}.1.1"  # section, observation and value codes below
OID_KONSIL_SPECIALTIES: Final = f"{KONSIL_OID}.1.2"  # konsil.identity.specialties codes
OID_KONSIL_TNM: Final = f"{KONSIL_OID}.1.3"  # UICC TNM category values (T2, N1a, IIB, …)
OID_KONSIL_TEMPLATES: Final = f"{KONSIL_OID}.2"
OID_ACCIDENT_REFERENCE: Final = f"{KONSIL_OID}.3.1"  # insurer's accident file number
OID_CNS_PROVIDER: Final = f"{KONSIL_OID}.3.2"  # CNS provider code (code prestataire)
OID_KONSIL_PRACTITIONER: Final = f"{KONSIL_OID}.3.3"
OID_KONSIL_ORGANISATION: Final = f"{KONSIL_OID}.3.4"
OID_CLINICAL_TRIAL: Final = f"{KONSIL_OID}.3.5"  # trial registry id (e.g. NCT…, EU CT number)


@dataclass(frozen=True)
class DocumentType:
    kind: str  # Konsil's short name, used by document_kind()
    code: str  # DT-xxxxx in 1.3.182.5.9
    display: str
    template: str  # document-level templateId besides the general header
    official: bool  # True: eSanté's code; False: Konsil's own assumption


DOCUMENT_TYPES: Final[tuple[DocumentType, ...]] = (
    # standard: eSanté's sick-leave certificate
    DocumentType(
        "sick-leave",
        "DT-20002",
        "Certificat d'incapacité de travail",
        LU_SICK_LEAVE_TEMPLATE,
        official=True,
    ),
    # Konsil's own assumptions: no published eSanté DT code known to us; the DT-9xxxx range is
    # chosen to stay clear of eSanté's numbering and must be mapped when official codes exist.
    DocumentType(
        "rcp-report",
        "DT-91001",
        "Fiche de réunion de concertation pluridisciplinaire",
        f"{OID_KONSIL_TEMPLATES}.1",
        official=False,
    ),
    DocumentType(
        "teleconsultation-report",
        "DT-91002",
        "Compte rendu de téléconsultation",
        f"{OID_KONSIL_TEMPLATES}.2",
        official=False,
    ),
    DocumentType(
        "prescription",
        "DT-91003",
        "Prescription de médicaments",
        f"{OID_KONSIL_TEMPLATES}.3",
        official=False,
    ),
)
BY_KIND: Final[dict[str, DocumentType]] = {t.kind: t for t in DOCUMENT_TYPES}
BY_DT_CODE: Final[dict[str, DocumentType]] = {t.code: t for t in DOCUMENT_TYPES}


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    display: str


def loinc(code: str, display: str) -> Code:
    return Code(code, OID_LOINC, display)


def konsil(code: str, display: str) -> Code:
    return Code(code, OID_KONSIL_CODES, display)


# Section codes: LOINC where a well-known one fits (standard), Konsil's own otherwise.
SEC_DIAGNOSIS: Final = loinc("29548-5", "Diagnostic")
SEC_HISTORY: Final = loinc("11348-0", "Antécédents")
SEC_REASON: Final = loinc("29299-5", "Motif de la consultation")
SEC_PRESENT_ILLNESS: Final = loinc("10164-2", "Histoire de la maladie")
SEC_FINDINGS: Final = loinc("29545-1", "Examen clinique")
SEC_PLAN: Final = loinc("18776-5", "Plan de soins")
SEC_PRESCRIPTIONS: Final = loinc("57828-6", "Prescriptions")
SEC_INCAPACITY: Final = konsil("SEC-INCAPACITY", "Incapacité de travail")
SEC_ACCIDENT: Final = konsil("SEC-ACCIDENT", "Accident")
SEC_FAMILY: Final = konsil("SEC-FAMILY", "Congé pour raisons familiales")
SEC_MATERNITY: Final = konsil("SEC-MATERNITY", "Maternité")
SEC_RCP_QUESTION: Final = konsil("SEC-RCP-QUESTION", "Question posée à la RCP")
SEC_STAGING: Final = konsil("SEC-STAGING", "Stade TNM et état général")
SEC_PROPOSAL: Final = konsil("SEC-PROPOSAL", "Proposition de la RCP")
SEC_CONFORMITY: Final = konsil("SEC-CONFORMITY", "Conformité aux référentiels")
SEC_TRIAL: Final = konsil("SEC-TRIAL", "Essai clinique")
SEC_QUORUM: Final = konsil("SEC-QUORUM", "Quorum et participants")

# Observation codes.
OBS_DIAGNOSIS: Final = loinc("29308-4", "Diagnostic")
OBS_T: Final = loinc("21905-5", "Tumeur primitive (T clinique)")
OBS_N: Final = loinc("21906-3", "Ganglions régionaux (N clinique)")
OBS_M: Final = loinc("21907-1", "Métastases à distance (M clinique)")
OBS_STAGE: Final = loinc("21908-9", "Stade clinique")
OBS_ECOG: Final = loinc("89247-1", "Score ECOG / OMS")
OBS_EXPECTED_DELIVERY: Final = loinc("11778-8", "Date présumée de l'accouchement")
OBS_INCAPACITY: Final = konsil("INCAPACITY", "Période d'incapacité de travail")
OBS_FIRST_DAY_OFF: Final = konsil("FIRST-DAY-OFF", "Premier jour d'arrêt de travail")
OBS_EXTENSION: Final = konsil("EXTENSION", "Prolongation")
OBS_OUTINGS: Final = konsil("OUTINGS-ALLOWED", "Sorties autorisées")
OBS_HOSPITALISED: Final = konsil("HOSPITALISED", "Hospitalisation")
OBS_STAY_ADDRESS: Final = konsil("STAY-ADDRESS", "Adresse pendant l'incapacité")
OBS_ACCIDENT: Final = konsil("ACCIDENT", "Accident")
OBS_TOPOGRAPHY: Final = konsil("ICDO3-TOPOGRAPHY", "Topographie CIM-O-3")
OBS_MORPHOLOGY: Final = konsil("ICDO3-MORPHOLOGY", "Morphologie CIM-O-3")
OBS_TUMOUR_STATUS: Final = konsil("TUMOUR-STATUS", "Tumeur primitive ou secondaire")
OBS_CONFORMITY: Final = konsil("GUIDELINE-CONFORMITY", "Proposition conforme aux référentiels")
OBS_TRIAL: Final = konsil("TRIAL-PROPOSED", "Inclusion dans un essai proposée")
OBS_QUORUM: Final = konsil("QUORUM-MET", "Quorum atteint")
OBS_REIMBURSABLE: Final = konsil("CNS-REIMBURSABLE", "Remboursable par la CNS")
OBS_CASE_STATUS: Final = konsil("CASE-STATUS", "Statut du dossier")
OBS_DEVIATION: Final = konsil("GUIDELINE-DEVIATION", "Justification de l'écart au référentiel")
OBS_PATIENT_INFORMED: Final = konsil("PATIENT-INFORMED", "Patient informé de la présentation")
OBS_TELE_CONSENT: Final = konsil("TELECONSULTATION-CONSENT", "Consentement à la téléconsultation")
OBS_TELE_MODALITY: Final = konsil("TELECONSULTATION-MODALITY", "Modalité de la téléconsultation")
OBS_FOLLOW_UP: Final = konsil("FOLLOW-UP", "Prochain rendez-vous")
ACT_RCP_MEETING: Final = konsil("RCP-MEETING", "Réunion de concertation pluridisciplinaire")

# Value sets.
SICK_LEAVE_KINDS: Final[dict[str, str]] = {
    "illness": "Maladie",
    "accident": "Accident",
    "family-reason": "Congé pour raisons familiales",
    "maternity": "Maternité",
}
ACCIDENT_KINDS: Final[dict[str, str]] = {
    "work": "Accident du travail",
    "commute": "Accident de trajet",
    "private": "Accident de la vie privée",
    "sport": "Accident de sport",
    "school": "Accident scolaire",
}
TUMOUR_STATUS: Final[dict[str, str]] = {
    "primary": "Tumeur primitive",
    "secondary": "Localisation secondaire (métastase)",
    "recurrence": "Récidive",
}
TELE_MODALITIES: Final[dict[str, str]] = {"video": "Vidéo", "phone": "Téléphone"}
CASE_STATUS: Final[dict[str, str]] = {
    "first-presentation": "Premier passage en RCP",
    "re-presentation": "Nouveau passage en RCP",
    "for-information": "Dossier présenté pour information",
}
PROPOSAL_KINDS: Final[dict[str, str]] = {
    "surgery": "Chirurgie",
    "chemotherapy": "Chimiothérapie",
    "radiotherapy": "Radiothérapie",
    "hormone-therapy": "Hormonothérapie",
    "targeted-therapy": "Thérapie ciblée",
    "immunotherapy": "Immunothérapie",
    "surveillance": "Surveillance",
    "supportive-care": "Soins de support",
    "further-investigation": "Examens complémentaires",
    "other": "Autre",
}
# LOINC answer list LL529-9 (standard).
ECOG: Final[dict[int, Code]] = {
    0: loinc("LA9622-7", "Activité normale, sans restriction"),
    1: loinc("LA9623-5", "Restreint pour les activités physiques intenses, ambulatoire"),
    2: loinc("LA9624-3", "Ambulatoire, autonome, incapable de travailler"),
    3: loinc("LA9625-0", "Autonomie limitée, alité ou au fauteuil plus de 50 % du temps"),
    4: loinc("LA9626-8", "Complètement dépendant, alité ou au fauteuil en permanence"),
    5: loinc("LA9627-6", "Décédé"),
}
# EDQM Standard Terms routes (standard codes; the subset Konsil offers).
ROUTES: Final[dict[str, str]] = {
    "20053000": "Voie orale",
    "20045000": "Voie intraveineuse",
    "20066000": "Voie sous-cutanée",
    "20035000": "Voie intramusculaire",
    "20003000": "Voie cutanée",
    "20061000": "Voie rectale",
    "20020000": "Voie inhalée",
    "20057000": "Voie ophtalmique",
    "20051000": "Voie nasale",
    "20067000": "Voie sublinguale",
    "20070000": "Voie transdermique",
}
# UCUM units Konsil offers for doses and quantities.
UNITS: Final[dict[str, str]] = {
    "1": "unité(s)",
    "mg": "mg",
    "g": "g",
    "ug": "µg",
    "mL": "mL",
    "[iU]": "UI",
    "{tbl}": "comprimé(s)",
    "{caps}": "gélule(s)",
    "{drop}": "goutte(s)",
    "{puff}": "bouffée(s)",
    "{sachet}": "sachet(s)",
    "{patch}": "patch(s)",
}
FREQUENCY_UNITS: Final[dict[str, str]] = {"h": "heure", "d": "jour", "wk": "semaine"}
