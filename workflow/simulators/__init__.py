"""Receiving-side simulators of the DSP (XDS.b ITI-41 / MHD ITI-65) and the CNS (eCIT)."""
