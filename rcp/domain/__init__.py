"""Pure RCP rules: no database, no aiohttp."""
