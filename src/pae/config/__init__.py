"""Run settings that load without torch: options and flags (``options``), a run's config (``train``), PAE's
settings (``pae``). Import the submodules directly; this package re-exports nothing, so importing one part never
drags in the others."""
