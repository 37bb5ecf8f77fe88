"""DINO pretraining: config, schedules, optimisation, distributed set-up and the trainer (SPEC §3–§7)."""
