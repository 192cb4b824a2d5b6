"""The invitation e-mail, sent through the configured SMTP server (aiosmtplib)."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from konsil.config import SmtpConfig

BODY_FR = (
    "Bonjour,\n\n{doctor} vous invite à une téléconsultation le {when}.\n"
    "Ouvrez ce lien personnel (ne le partagez pas) :\n\n{link}\n\n"
    "Le lien expire le {expires}.\n"
)
BODY_EN = (
    "Hello,\n\n{doctor} invites you to a teleconsultation on {when}.\n"
    "Open this personal link (do not share it):\n\n{link}\n\n"
    "The link expires on {expires}.\n"
)


def invitation_message(
    cfg: SmtpConfig, to: str, *, doctor: str, when: str, expires: str, link: str, lang: str
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = to
    msg["Subject"] = (
        "Votre téléconsultation Konsil" if lang == "fr" else "Your Konsil teleconsultation"
    )
    body = BODY_FR if lang == "fr" else BODY_EN
    msg.set_content(body.format(doctor=doctor, when=when, link=link, expires=expires))
    return msg


async def send(cfg: SmtpConfig, msg: EmailMessage) -> None:
    await aiosmtplib.send(msg, hostname=cfg.host, port=cfg.port, timeout=15)
