"""DINO pretraining: config, schedules, the DINO loss, optimisation, checkpoints and the trainer (SPEC §3–§7)."""
