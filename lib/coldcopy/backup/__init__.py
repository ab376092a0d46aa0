"""Taking backups (logical dumps and physical base backups) and reading them back."""
