"""The fixed code list of professions and specialties."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Specialty:
    code: str
    fr: str
    en: str
    surgical: bool = False


SPECIALTIES: tuple[Specialty, ...] = (
    Specialty("general-practice", "Médecine générale", "General practice"),
    Specialty("surgery", "Chirurgie générale", "General surgery", surgical=True),
    Specialty("visceral-surgery", "Chirurgie viscérale et digestive", "Visceral surgery", True),
    Specialty("thoracic-surgery", "Chirurgie thoracique", "Thoracic surgery", True),
    Specialty("breast-surgery", "Chirurgie sénologique", "Breast surgery", True),
    Specialty("neurosurgery", "Neurochirurgie", "Neurosurgery", True),
    Specialty("orthopaedic-surgery", "Chirurgie orthopédique", "Orthopaedic surgery", True),
    Specialty("plastic-surgery", "Chirurgie plastique", "Plastic surgery", True),
    Specialty("urology", "Urologie", "Urology", True),
    Specialty("gynaecology", "Gynécologie-obstétrique", "Gynaecology and obstetrics", True),
    Specialty("ent", "Oto-rhino-laryngologie", "Ear, nose and throat", True),
    Specialty("medical-oncology", "Oncologie médicale", "Medical oncology"),
    Specialty("radiation-oncology", "Radiothérapie", "Radiation oncology"),
    Specialty("haematology", "Hématologie", "Haematology"),
    Specialty("radiology", "Radiologie", "Radiology"),
    Specialty("nuclear-medicine", "Médecine nucléaire", "Nuclear medicine"),
    Specialty("pathology", "Anatomie pathologique", "Pathology"),
    Specialty("gastroenterology", "Gastro-entérologie", "Gastroenterology"),
    Specialty("pneumology", "Pneumologie", "Pulmonology"),
    Specialty("dermatology", "Dermatologie", "Dermatology"),
    Specialty("neurology", "Neurologie", "Neurology"),
    Specialty("endocrinology", "Endocrinologie", "Endocrinology"),
    Specialty("cardiology", "Cardiologie", "Cardiology"),
    Specialty("nephrology", "Néphrologie", "Nephrology"),
    Specialty("internal-medicine", "Médecine interne", "Internal medicine"),
    Specialty("geriatrics", "Gériatrie", "Geriatrics"),
    Specialty("paediatrics", "Pédiatrie", "Paediatrics"),
    Specialty("palliative-care", "Soins palliatifs", "Palliative care"),
    Specialty("psychiatry", "Psychiatrie / psycho-oncologie", "Psychiatry / psycho-oncology"),
    Specialty("genetics", "Génétique médicale", "Medical genetics"),
)

BY_CODE: dict[str, Specialty] = {s.code: s for s in SPECIALTIES}

PROFESSIONS: dict[str, tuple[str, str]] = {
    "physician": ("Médecin", "Physician"),
    "nurse": ("Infirmier·ère", "Nurse"),
    "pharmacist": ("Pharmacien·ne", "Pharmacist"),
    "psychologist": ("Psychologue", "Psychologist"),
    "coordinator": ("Coordinateur·rice", "Coordinator"),
    "other": ("Autre professionnel", "Other professional"),
}


def is_specialty(code: str) -> bool:
    return code in BY_CODE
