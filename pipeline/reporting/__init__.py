"""Reporting blocks: the run report's sections (stage_sections, pretrain_section, transfer_section, energy_section,
projection) over the run view (run_view) and formatting (format); the sweep summary (sweep_jobs, sweep_table); plots;
energy accounting (energy) and the full-scale projection (full_scale)."""
