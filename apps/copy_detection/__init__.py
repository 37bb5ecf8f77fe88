"""Copy detection: the Copydays protocol (SPEC §12), a Copydays-layout benchmark generator and a copy finder."""
