"""Teleconsultation domain (no aiohttp): appointments, invitations, guest access, check peers,
chat and files, after-call documents."""
