"""PAE: reproducible visual prompt tuning and Prompt-Agnostic Evolution on frozen ViTs."""
