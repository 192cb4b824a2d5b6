"""UI text in French (default) and English.

Templates and code write the English text; each package contributes a catalog of French
translations. A missing translation falls back to English rather than failing. A message made
from a template and values (``konsil.errors.Reason``) is looked up by its template, then filled
in with the same values.
"""

from __future__ import annotations

from collections.abc import Mapping

from konsil.errors import Reason

LANGUAGES = ("fr", "en")

KERNEL_FR: dict[str, str] = {
    "Sign in": "Se connecter",
    "Sign out": "Se déconnecter",
    "Username": "Identifiant",
    "Password": "Mot de passe",
    "Authentication code": "Code d'authentification",
    "Enter the 6-digit code from your authenticator app.": "Saisissez le code à 6 chiffres de votre application d'authentification.",
    "Verify": "Vérifier",
    "Dashboard": "Tableau de bord",
    "Administration": "Administration",
    "Organisations": "Organisations",
    "Accounts": "Comptes",
    "Patients": "Patients",
    "Name": "Nom",
    "Kind": "Type",
    "Identifier": "Identifiant",
    "Create": "Créer",
    "Role": "Rôle",
    "Display name": "Nom affiché",
    "Specialty": "Spécialité",
    "Organisation": "Organisation",
    "Active": "Actif",
    "Given name": "Prénom",
    "Family name": "Nom de famille",
    "Birth date": "Date de naissance",
    "Sex": "Sexe",
    "Matricule": "Matricule",
    "E-mail": "Courriel",
    "Phone": "Téléphone",
    "Address": "Adresse",
    "Search": "Rechercher",
    "Welcome": "Bienvenue",
    "Nothing yet.": "Rien pour le moment.",
    "Security": "Sécurité",
    "Two-factor authentication": "Authentification à deux facteurs",
    "Scan this key into your authenticator app, then enter the code it shows.": "Ajoutez cette clé dans votre application d'authentification, puis saisissez le code affiché.",
    "Two-factor authentication is on.": "L'authentification à deux facteurs est activée.",
    "Enable": "Activer",
    "Deactivate": "Désactiver",
    "Activate": "Activer",
    "Back to the dashboard": "Retour au tableau de bord",
    "Something went wrong": "Une erreur est survenue",
    "Page not found": "Page introuvable",
    "You are not allowed to see this page.": "Vous n'êtes pas autorisé·e à voir cette page.",
    "Please correct the highlighted fields.": "Veuillez corriger les champs signalés.",
    "Saved.": "Enregistré.",
    "none": "aucun",
    "Secure messaging and clinical workflows": "Messagerie sécurisée et parcours cliniques",
    "Language": "Langue",
    "Skip to content": "Aller au contenu",
    "Practitioners": "Professionnels",
    "Patient": "Patient",
    "hospital": "hôpital",
    "practice": "cabinet",
    "lab": "laboratoire",
    "pharmacy": "pharmacie",
    "other": "autre",
    "admin": "administrateur",
    "practitioner": "praticien",
    "coordinator": "coordinateur",
    "external": "externe (messagerie seule)",
    "Female": "Féminin",
    "Male": "Masculin",
    "Unknown": "Inconnu",
    "Profession": "Profession",
    "Audit trail": "Journal d'audit",
    "When": "Quand",
    "Who": "Qui",
    "Action": "Action",
    "Outcome": "Résultat",
    "Chain verified": "Chaîne vérifiée",
    "Chain broken": "Chaîne rompue",
    "wrong username or password": "identifiant ou mot de passe incorrect",
    "too many failed attempts: this account is locked for a while": "trop d'échecs : ce compte est verrouillé pour un moment",
    "that code is not valid": "ce code n'est pas valide",
    "that code is not valid: check the time on your phone": "ce code n'est pas valide : vérifiez l'heure de votre téléphone",
    "your session has expired: sign in again": "votre session a expiré : reconnectez-vous",
    "the form has expired or did not come from this site: reload the page": "le formulaire a expiré ou ne provient pas de ce site : rechargez la page",
    "page not found": "page introuvable",
    "API tokens": "Jetons d'API",
    "Bearer tokens let a hospital's record system use /api/v1 as one account.": "Les jetons permettent au dossier patient informatisé d'un hôpital d'utiliser /api/v1 au nom d'un compte.",
    "Copy this token now: it is shown only once.": "Copiez ce jeton maintenant : il n'est affiché qu'une fois.",
    "Created": "Créé",
    "Expires": "Expire",
    "never": "jamais",
    "Revoke": "Révoquer",
    "Save": "Enregistrer",
    # an error summary's link: the field's label, then its reason
    "{label}: {reason}": "{label} : {reason}",
    "required": "obligatoire",
    "must be 13 digits": "doit comporter 13 chiffres",
    "impossible birth date": "date de naissance impossible",
    "wrong Luhn check digit": "chiffre de contrôle Luhn erroné",
    "wrong Verhoeff check digit": "chiffre de contrôle Verhoeff erroné",
    "a matricule has exactly 13 digits": "un matricule comporte exactement 13 chiffres",
    "the matricule does not start with a possible birth date": "le matricule ne commence pas par une date de naissance possible",
    "the matricule's birth date is in the future": "la date de naissance du matricule est dans le futur",
    "the matricule's Luhn check digit (12th digit) is wrong": "le chiffre de contrôle Luhn du matricule (12e chiffre) est erroné",
    "the matricule's Verhoeff check digit (13th digit) is wrong": "le chiffre de contrôle Verhoeff du matricule (13e chiffre) est erroné",
    "the birth date does not match the matricule": "la date de naissance ne correspond pas au matricule",
    "does not match the matricule": "ne correspond pas au matricule",
    "is in the future": "est dans le futur",
    "is not an e-mail address": "n'est pas une adresse électronique",
    "already registered": "déjà enregistré",
    "already taken": "déjà pris",
    "already exists": "existe déjà",
    "unknown specialty code": "spécialité inconnue",
    "unknown organisation": "organisation inconnue",
    "at least 10 characters": "au moins 10 caractères",
    "expected a date (YYYY-MM-DD)": "date attendue (AAAA-MM-JJ)",
    "the patient record is not valid": "la fiche patient n'est pas valide",
    "the account is not valid": "le compte n'est pas valide",
    "the organisation is not valid": "l'organisation n'est pas valide",
    "a patient with this matricule exists already": "un patient avec ce matricule existe déjà",
    "CNS provider code": "Code prestataire CNS",
    "Valid for (days)": "Validité (jours)",
    "internal error: the incident was logged": "erreur interne : l'incident a été journalisé",
    # the titles of konsil.errors, shown on the error page
    "Bad request": "Requête incorrecte",
    "Invalid input": "Saisie non valide",
    "Authentication required": "Authentification requise",
    "Forbidden": "Accès refusé",
    "Not found": "Introuvable",
    "Conflict": "Conflit",
    "Too large": "Trop volumineux",
    "Too many requests": "Trop de requêtes",
    "Method not allowed": "Méthode non autorisée",
    "Internal error": "Erreur interne",
    "Service unavailable": "Service indisponible",
}


class Translator:
    """French for every text; English for the few whose page text differs from the JSON text
    (``add_english``: a refusal whose English lists the refused fields' keys, which a page shows
    on their own, by label)."""

    def __init__(self) -> None:
        self._fr: dict[str, str] = dict(KERNEL_FR)
        self._en: dict[str, str] = {}

    def add(self, french: Mapping[str, str]) -> None:
        self._fr.update(french)

    def add_english(self, english: Mapping[str, str]) -> None:
        """Page-only English for templates (``{what} is not valid — {problems}`` →
        ``{what} is not valid``); JSON answers keep the Reason's own text."""
        self._en.update(english)

    def gettext(self, lang: str, text: str) -> str:
        if lang != "fr":
            if isinstance(text, Reason) and text.params and text.template in self._en:
                return self._fill(lang, text)
            return text
        if isinstance(text, Reason) and text.params:
            return self._fill(lang, text)
        return self._fr.get(text, text)

    def _fill(self, lang: str, reason: Reason) -> str:
        template = (self._fr if lang == "fr" else self._en).get(reason.template)
        if template is None:
            return str(reason)
        params = {
            k: self.gettext(lang, v) if isinstance(v, Reason) else v
            for k, v in reason.params.items()
        }
        try:
            # a translation may leave a value out (a page lists the fields on their own)
            return template.format(**params)
        except (KeyError, IndexError, ValueError):  # a broken translation: the English
            return str(reason)

    def missing_fr(self, texts: list[str]) -> list[str]:
        return [t for t in texts if t not in self._fr]
