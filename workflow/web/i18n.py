"""French for the refusals of the document builders (``workflow.cda``) and of the correction form
(``workflow.corrections``), shown on the after-call form and the correction pages.

Each entry translates an English template once, whatever values it names
(``konsil.errors.Reason``): ``{code!r}``, ``{days}`` … are filled in after translation. A test
lists every refusal those modules can raise and checks it is here (tests/workflow/
test_refusals_in_french.py); the JSON API keeps the English.
"""

from __future__ import annotations

# The English a page shows where the JSON's lists every problem by field key: the page's error
# summary lists them, by label (konsil.i18n.Translator.add_english).
PAGES_EN: dict[str, str] = {
    "{what} is not valid — {problems}": "{what} is not valid",
}

REFUSALS_FR: dict[str, str] = {
    # the refusal as a whole: the page lists every field under it, so the French leaves the
    # English list ({problems}) out
    "{what} is not valid — {problems}": "{what} n'est pas valide",
    "{what} is not valid": "{what} n'est pas valide",
    "the sick-leave certificate": "le certificat d'incapacité de travail",
    "the prescription": "l'ordonnance",
    "the teleconsultation report": "le compte rendu de téléconsultation",
    "the RCP report": "le compte rendu de RCP",
    "the document does not pass validation": "le document ne passe pas la validation",
    # any field
    "is required": "est obligatoire",
    "is longer than {limit} characters": "dépasse {limit} caractères",
    "contains control characters": "contient des caractères de contrôle",
    "is in the past": "est dans le passé",
    "needs a timezone": "doit indiquer un fuseau horaire",
    "unknown code {code!r} (one of: {options})": "code inconnu {code!r} (au choix : {options})",
    "{code!r} is not an ICD-10 code (e.g. J06.9)": (
        "{code!r} n'est pas un code CIM-10 (p. ex. J06.9)"
    ),
    # the header: patient, author, organisation, version
    "is not an OID": "n'est pas un OID",
    "is not a postal code": "n'est pas un code postal",
    "must be an ISO 3166 two-letter country code": (
        "doit être un code de pays ISO 3166 à deux lettres"
    ),
    "unknown code {code!r} (F, M or UN)": "code inconnu {code!r} (F, M ou UN)",
    "unknown specialty code {code!r}": "code de spécialité inconnu {code!r}",
    "a CNS provider code has 8 digits (e.g. 90812100 or 908121-00)": (
        "un code prestataire CNS comporte 8 chiffres (p. ex. 90812100 ou 908121-00)"
    ),
    "unknown code {code!r} (N, R or V)": "code inconnu {code!r} (N, R ou V)",
    "starts at 1": "commence à 1",
    "a first version replaces nothing": "une première version ne remplace rien",
    "a new version must name the document it replaces": (
        "une nouvelle version doit désigner le document qu'elle remplace"
    ),
    "a document cannot replace itself": "un document ne peut pas se remplacer lui-même",
    "must be lower than the new version": "doit être inférieure à la nouvelle version",
    # the sick-leave certificate
    "the incapacity ends before it starts": "l'incapacité se termine avant de commencer",
    "one certificate covers at most {days} days": "un certificat couvre au plus {days} jours",
    "cannot start more than {days} days before the certificate": (
        "ne peut pas commencer plus de {days} jours avant le certificat"
    ),
    "is after the start of the incapacity": "se situe après le début de l'incapacité",
    "a diagnosis (ICD-10) is required": "un diagnostic (CIM-10) est obligatoire",
    "an accident certificate needs the accident's kind and date": (
        "un certificat pour accident indique le type et la date de l'accident"
    ),
    "only an accident certificate has accident details": (
        "seul un certificat pour accident comporte les détails d'un accident"
    ),
    "leave for family reasons names the sick child": (
        "un congé pour raisons familiales désigne l'enfant malade"
    ),
    "the child is {age} or older": "l'enfant a {age} ans ou plus",
    "is the patient's own matricule": "est le matricule du patient lui-même",
    "only leave for family reasons names a child": (
        "seul un congé pour raisons familiales désigne un enfant"
    ),
    "maternity leave needs the presumed delivery date": (
        "un congé de maternité indique la date présumée de l'accouchement"
    ),
    "maternity leave is for the mother": "le congé de maternité est celui de la mère",
    "only maternity leave has a presumed delivery date": (
        "seul un congé de maternité a une date présumée d'accouchement"
    ),
    # the prescription
    "a prescription has at least one medication": "une ordonnance comporte au moins un médicament",
    "at most {count} medications per prescription": "au plus {count} médicaments par ordonnance",
    "a prescription cannot start in the past": "une ordonnance ne peut pas commencer dans le passé",
    "a prescription starts within 90 days": "une ordonnance commence dans les 90 jours",
    "{code!r} is not an ATC code (e.g. J01CA04)": "{code!r} n'est pas un code ATC (p. ex. J01CA04)",
    "must be more than 0": "doit dépasser 0",
    "1 to 24 administrations": "de 1 à 24 prises",
    "must be at least 1": "doit valoir au moins 1",
    "1 to {days} days": "de 1 à {days} jours",
    # the teleconsultation report
    "start and end need a timezone": "le début et la fin doivent indiquer un fuseau horaire",
    "the teleconsultation ends before it starts": (
        "la téléconsultation se termine avant de commencer"
    ),
    "a teleconsultation lasts at most 4 hours": "une téléconsultation dure au plus 4 heures",
    "the teleconsultation has not ended yet": "la téléconsultation n'est pas encore terminée",
    "the patient must consent to the teleconsultation": (
        "le patient doit consentir à la téléconsultation"
    ),
    "the author is not also a consultant": (
        "l'auteur ne figure pas aussi parmi les autres participants"
    ),
    # the RCP report
    "{code!r} is not a neoplasm code (C00 to D48)": (
        "{code!r} n'est pas un code de tumeur (C00 à D48)"
    ),
    "{code!r} is not an ICD-O-3 topography (e.g. C50.4)": (
        "{code!r} n'est pas une topographie CIM-O-3 (p. ex. C50.4)"
    ),
    "{code!r} is not an ICD-O-3 morphology (e.g. 8500/3)": (
        "{code!r} n'est pas une morphologie CIM-O-3 (p. ex. 8500/3)"
    ),
    "unknown TNM category {code!r}": "catégorie TNM inconnue {code!r}",
    "unknown stage group {code!r}": "stade inconnu {code!r}",
    "the WHO/ECOG performance status is 0 to 5": "l'indice de performance OMS/ECOG va de 0 à 5",
    "the board's proposal is required": "la proposition de la RCP est obligatoire",
    "a deviation from the guidelines must be justified": (
        "un écart aux recommandations doit être justifié"
    ),
    "only a deviation from the guidelines is justified": (
        "une justification n'accompagne qu'un écart aux recommandations"
    ),
    "only a proposed trial has an id": "seul un essai proposé a un identifiant",
    "the participants are required": "les participants sont obligatoires",
    "a participant is listed twice": "un participant figure deux fois",
    "the quorum needs at least {count} physicians of {count} different specialties": (
        "le quorum exige au moins {count} médecins de {count} spécialités différentes"
    ),
    "the report is authenticated by a participant": (
        "le compte rendu est authentifié par un participant"
    ),
    "the patient must be informed before the case is presented": (
        "le patient doit être informé avant la présentation du dossier"
    ),
    # the correction form's own reading of the values
    "expected a whole number": "nombre entier attendu",
    "expected a number": "nombre attendu",
    # the corrections' whole-page refusals (workflow.corrections)
    "no such document": "document introuvable",
    "only the document's author can correct it": "seul l'auteur du document peut le corriger",
    "only the current version of a final document can be corrected": "seule la version en vigueur d'un document définitif peut être corrigée",
    "the document cannot be read back for a correction: mark it entered in error and issue a new one": "le document ne peut pas être relu pour une correction : marquez-le comme émis par erreur et émettez-en un nouveau",
    "a {display} records a board's decision and is not corrected by one author: mark it as entered in error and submit the case to the board again": "le document « {display} » consigne la décision d'une RCP et n'est pas corrigé par un seul auteur : marquez-le comme émis par erreur et soumettez à nouveau le cas à la RCP",
    "a {display} cannot be corrected": "le document « {display} » ne peut pas être corrigé",
}
