"""HL7 CDA R2: builders, the eSanté Luxembourg profile checks and XML Schema validation."""
